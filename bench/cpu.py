"""Where the machine's CPU went while a scenario ran: in cores (latency), per event (throughput).

The bench, the broker and patrol's processes share the machine's cores. When together they want
more than it has, every hop waits for a core, and the latency grows with the wait, not with
anything patrol changed: the raw hop (one process) suffers much less than the worker's three
hops. This tells that case apart: the share of the machine that was busy, and each process's
part (the worker, its intake and SMS sender, the stub gateway, the broker, the bench itself).

In the throughput run the same samples give the CPU each event cost, the raw loop's (the bench
process and the broker) beside patrol's (every process it keeps busy): the rate two cores can
reach is bounded by that cost, whatever the code does with its time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import psutil

from bench.processes import module_of

_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: the machine's busy time, and each watched process's."""

    wall: float
    machine_busy: float
    processes: Mapping[str, float]


def cpu_seconds(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds used between two samples, by process and for the machine ("machine busy").
    A process seen in only one sample is left out."""
    if after.wall <= before.wall:
        raise ValueError("the second sample must be taken after the first")
    spent = {
        name: after.processes[name] - seconds
        for name, seconds in before.processes.items()
        if name in after.processes
    }
    spent["machine busy"] = after.machine_busy - before.machine_busy
    return spent


def cores_used(before: CpuSample, after: CpuSample, cpus: int) -> dict[str, float]:
    """Cores used between two samples, by process and for the machine ("machine busy"), and the
    machine's cores ("cores"). A process seen in only one sample is left out."""
    wall = after.wall - before.wall
    used = {name: round(s / wall, 2) for name, s in cpu_seconds(before, after).items()}
    used["cores"] = float(cpus)
    return used


def per_event(
    before: CpuSample, after: CpuSample, events: float, total_of: Collection[str]
) -> dict[str, float]:
    """CPU microseconds per event between two samples: by process, for the processes `total_of`
    together ("total": what the pipeline itself cost) and for the machine ("machine busy")."""
    if events <= 0:
        raise ValueError("no events between the samples")
    spent = cpu_seconds(before, after)
    spent["total"] = sum(s for name, s in spent.items() if name in total_of)
    return {name: round(s / events * 1e6, 1) for name, s in spent.items()}


def broker_process(port: int) -> psutil.Process | None:
    """The process listening on `port` (the local broker), if this user may see it."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def watched(worker_pid: int, gateway_pid: int, bootstrap: str) -> dict[str, psutil.Process]:
    """The processes of a worker's run, by the name the report gives them."""
    found = watched_bench(bootstrap)
    with contextlib.suppress(psutil.Error):
        worker = psutil.Process(worker_pid)
        found["worker"] = worker
        for child in worker.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[module_of(child)] = child
    with contextlib.suppress(psutil.Error):
        found["sms gateway"] = psutil.Process(gateway_pid)
    return found


def watched_bench(bootstrap: str) -> dict[str, psutil.Process]:
    """The bench's own process and the local broker (the raw loop runs in the bench)."""
    found: dict[str, psutil.Process] = {"bench": psutil.Process(os.getpid())}
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host in ("127.0.0.1", "localhost", "::1") and port.isdigit():
        broker = broker_process(int(port))
        if broker is not None:
            found["broker"] = broker
    return found


def sample(processes: Mapping[str, psutil.Process]) -> CpuSample:
    """CPU seconds used so far by each of `processes` (all threads), and by the machine."""
    spent: dict[str, float] = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            spent[name] = times.user + times.system
    machine = psutil.cpu_times()
    # guest time is already in user time on Linux; steal is the hypervisor's, not this machine's
    busy = sum(getattr(machine, field, 0.0) for field in _BUSY_FIELDS)
    return CpuSample(wall=time.monotonic(), machine_busy=busy, processes=spent)
