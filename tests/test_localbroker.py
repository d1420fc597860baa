"""The local Tansu broker: start, pause and resume as the tests and the demo use it."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError

from tests.fixtures.broker import BrokerFactory, consume


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False) as producer:
        await producer.send_and_wait(topic, value, key=b"k")


class TestTansuBroker:
    async def test_a_paused_broker_hangs_and_keeps_its_records(
            self, broker_factory: BrokerFactory) -> None:
        """While paused a connected producer's send times out; after resume the records written
        before the pause are still there and the same producer sends again (stop() would have
        lost them)."""
        broker = broker_factory()
        async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                                    request_timeout_ms=1000) as producer:
            await producer.send_and_wait("kept", b"before", key=b"k")
            broker.pause()
            try:
                with pytest.raises((KafkaTimeoutError, RequestTimedOutError)):
                    await producer.send_and_wait("kept", b"during", key=b"k")
            finally:
                broker.resume()
            await producer.send_and_wait("kept", b"after", key=b"k")
        records = await consume(broker.bootstrap, "kept", timeout_s=10,
                                until=lambda rs: b"after" in [r.value for r in rs])
        values = [r.value for r in records]
        assert values[0] == b"before" and values[-1] == b"after"

    async def test_pause_and_resume_of_a_stopped_broker_do_nothing(
            self, broker_factory: BrokerFactory) -> None:
        """Pausing or resuming a broker that is not running changes nothing; it starts again."""
        broker = broker_factory()
        broker.stop()
        broker.pause()
        broker.resume()
        assert not broker.is_running
        broker.start()
        await _produce(broker.bootstrap, "fresh", b"one")
