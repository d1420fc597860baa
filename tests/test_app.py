"""The daemon in-process: start order, waiting out a broker that is down at start, clean stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from poller import app
from poller.config import Settings
from poller.localbroker import TansuBroker, free_port
from poller.simulator import Simulator
from tests.fixtures.simulator import APPKEY, OPENID
from tests.integration.harness import eventually


async def status(port: int, path: str) -> int:
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def until_status(port: int, path: str, expected: int) -> None:
    async def answered() -> bool:
        return await status(port, path) == expected
    await eventually(answered, interval_s=0.05, what=f"{path} answering {expected}")


class TestStartup:
    async def test_waits_out_a_broker_that_is_down_at_start(
            self, make_simulator: object, tmp_path: Path) -> None:
        """Probes answer at once; readiness waits for the broker; SIGTERM-style stop is clean."""
        sim: Simulator = await make_simulator(tasks=10, days=2)  # type: ignore[operator]
        broker = TansuBroker(tmp_path)  # not started yet: its port refuses connections
        port = free_port()
        settings = Settings.load({
            "WAIQIN_BASE_URL": sim.base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_REQUEST_TIMEOUT_MS": "1000", "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'a.db'}",
            "POLLER_POLL_INTERVAL": "0.2", "POLLER_HTTP_PORT": str(port),
            "POLLER_MAX_BACKOFF_SECONDS": "1",
        })
        stop = asyncio.Event()
        daemon = asyncio.create_task(app.run(settings, stop=stop, handle_signals=False))
        try:
            await until_status(port, "/healthz", 200)
            assert await status(port, "/readyz") == 503
            assert not daemon.done()
            broker.start()
            await until_status(port, "/readyz", 200)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 30)
            broker.stop()
        assert await status(port, "/healthz") == 0, "the health server stops last"

    async def test_waits_out_a_store_that_refuses_at_start(
            self, make_simulator: object, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """A store that refuses at start (not a database: a refusal, not an outage) is retried
        with backoff while probes answer, not a crash loop; once it is fixed the daemon runs."""
        sim: Simulator = await make_simulator(tasks=10, days=2)  # type: ignore[operator]
        db = tmp_path / "state.db"
        db.write_bytes(b"this is not an SQLite database" * 100)
        port = free_port()
        settings = Settings.load({
            "WAIQIN_BASE_URL": sim.base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
            "KAFKA_BOOTSTRAP_SERVERS": running_kafka_broker.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "false", "POLLER_STORE_URL": f"sqlite:///{db}",
            "POLLER_POLL_INTERVAL": "0.2", "POLLER_HTTP_PORT": str(port),
            "POLLER_MAX_BACKOFF_SECONDS": "1", "POLLER_TOPIC_PREFIX": "refusing",
        })
        stop = asyncio.Event()
        daemon = asyncio.create_task(app.run(settings, stop=stop, handle_signals=False))
        try:
            await until_status(port, "/healthz", 200)
            await until_status(port, "/readyz", 503)
            assert not daemon.done(), "a refusing store must not end the daemon"
            db.unlink()  # the operator restores the volume
            await until_status(port, "/readyz", 200)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 30)
