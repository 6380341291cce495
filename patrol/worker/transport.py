"""faust's Kafka transport, with a fetch wait that suits a stream fed in small batches.

faust builds its consumer with `fetch_max_wait_ms=1500`. A consumer leaves partitions that
still hold fetched records out of its next fetch, so when the agents are a batch behind, the
fetch in flight can name only partitions nothing is written to, and the broker holds it the full
wait: the busy partitions' next records then sit on the broker for up to 1.5 s. In the latency
benchmark that happened in about half the runs (tasks 1.2–1.8 s late at 1,000 detections/s
instead of tens of milliseconds). A short wait bounds that stall; an idle worker pays for it
with a few empty fetches a second.

Its producer also hands whole record batches to aiokafka (`patrol.batches`), which faust's
producer does not offer.

`BROKER_SCHEME` names this transport in the app's broker URLs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

BROKER_SCHEME = "patrol-kafka"
FETCH_MAX_WAIT_MS = 20


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Producer(faust_aiokafka.Producer):
    """faust's producer, plus aiokafka's batch interface on the same client and connection."""

    def create_batch(self) -> Any:
        """An empty `aiokafka.producer.message_accumulator.BatchBuilder` of this producer."""
        return self._ensure_producer().create_batch()

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        """Queue a filled batch; the future is done when the broker has acknowledged it."""
        sent: asyncio.Future[Any] = await self._ensure_producer().send_batch(
            batch, topic, partition=partition
        )
        return sent


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


drivers.TRANSPORTS.aliases.setdefault(BROKER_SCHEME, "patrol.worker.transport:Transport")
