"""Where Kafka's default partitioner puts a key: the intake places each case and hazard on the
internal partition that owns its state, and the worker and the sender must agree with it."""

from __future__ import annotations

import functools
import struct


@functools.lru_cache(maxsize=1 << 12)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (as the producer does).

    Remembered for the most recent keys: a key comes back soon (a task's status records, the
    hazard keys), and the hash in Python cost more than a lookup, 2 % of the worker's time in
    the catch-up with feedback (bench/README). Few are kept: 65,536 held every case key of the
    memory bench and added 211 B per open case."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (aiokafka.partitioner.murmur2, the Java client's Utils.murmur2), with
    the body read as little-endian words by struct rather than byte by byte: about twice as
    fast, and the intake hashes every accepted detection's key."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        rest = data[words << 2 :]
        if tail == 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h = ((h ^ rest[0]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)
