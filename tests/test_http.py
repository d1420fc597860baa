"""Tests for poller.http: HealthState rules and the real server's answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from poller.config import HttpSettings
from poller.errors import PublishUnavailable, ServeError
from poller.http import HealthServer, HealthState
from poller.metrics import ACTIVE_SINCE, EVENTS_PUBLISHED, LAST_SUCCESS, REGISTRY
from poller.redact import Redactor

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def state(**kw: Any) -> HealthState:
    return HealthState(stuck_after_s=60, ready_window_s=180, started_at=T0, **kw)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class TestLiveness:
    def test_live_while_beating(self) -> None:
        """A loop that beat within stuck_after_s is live."""
        health = state()
        health.beat(at(100))
        assert health.is_live(at(150))

    def test_stuck_loop_is_not_live(self) -> None:
        """No heartbeat for longer than stuck_after_s makes the process not live."""
        health = state()
        health.beat(at(100))
        assert not health.is_live(at(161))
        assert "not made progress for 61s" in (health.liveness_problem(at(161)) or "")

    async def test_finished_loop_task_is_not_live(self) -> None:
        """Once the watched loop task is done, the process is not live whatever the heartbeat."""
        health = state()
        task = asyncio.create_task(asyncio.sleep(0))
        health.watch(task)
        await task
        health.beat(at(1))
        assert health.liveness_problem(at(2)) == "the poll loop has stopped"

    def test_standby_ignores_heartbeat(self) -> None:
        """A standby replica waiting for leadership stays live without beating."""
        health = state()
        health.set_standby(True)
        assert health.is_live(at(3600))


class TestReadiness:
    def test_ready_during_first_window(self) -> None:
        """Right after start, before any cycle finished, the poller is ready."""
        assert state().readiness(at(10)) == (True, [])

    def test_not_ready_without_success_in_window(self) -> None:
        """No success within ready_window_s of the start makes it not ready."""
        ready, reasons = state().readiness(at(181))
        assert not ready
        assert reasons == ["no successful cycle since the start at 2024-05-01T08:00:00+00:00"]

    def test_failed_cycle_is_not_ready(self) -> None:
        """A failed last cycle turns readiness false at once, naming the error."""
        health = state()
        health.cycle_started(at(1))
        health.cycle_failed(PublishUnavailable("brokers down"))
        ready, reasons = health.readiness(at(2))
        assert not ready
        assert reasons == ["last 1 cycle(s) failed: PublishUnavailable: brokers down"]
        assert health.consecutive_failures == 1

    def test_success_clears_failures(self) -> None:
        """A successful cycle clears the failure count and error and sets the metric."""
        health = state()
        health.cycle_failed(PublishUnavailable("down"))
        health.cycle_failed(PublishUnavailable("still down"))
        assert health.consecutive_failures == 2
        health.cycle_succeeded(at(30))
        assert (health.consecutive_failures, health.last_error) == (0, None)
        assert health.last_success_at == at(30)
        assert LAST_SUCCESS.value == at(30).timestamp()
        assert health.readiness(at(200)) == (True, [])

    def test_stale_success_is_not_ready(self) -> None:
        """A success older than ready_window_s makes it not ready."""
        health = state()
        health.cycle_succeeded(at(30))
        ready, reasons = health.readiness(at(211))
        assert not ready
        assert reasons == ["last successful cycle at 2024-05-01T08:00:30+00:00"]

    def test_standby_is_ready(self) -> None:
        """A standby replica is ready with the reason 'standby'."""
        health = state()
        health.set_standby(True)
        assert health.readiness(at(3600)) == (True, ["standby"])

    def test_takeover_measures_from_the_takeover(self) -> None:
        """After a long standby, the first cycle gets the ready window from the takeover on."""
        health = state()
        health.cycle_succeeded(at(10))
        health.set_standby(True)
        health.set_standby(False, now=at(3600))
        assert health.readiness(at(3650)) == (True, [])
        ready, reasons = health.readiness(at(3800))
        assert not ready
        assert reasons == ["no successful cycle since the takeover at 2024-05-01T09:00:00+00:00"]


class TestHealthMetrics:
    def test_start_exports_active_since_and_no_last_success(self) -> None:
        """A new process exports when it became active, no last success and standby 0."""
        state()
        assert ACTIVE_SINCE.value == T0.timestamp()
        assert LAST_SUCCESS.value is None
        assert REGISTRY.get_sample_value("waiqin_poller_standby") == 0

    def test_standby_exports_neither_timestamp(self) -> None:
        """A standby exports no last success and no active-since (it does not poll), standby 1."""
        health = state()
        health.cycle_succeeded(at(30))
        health.set_standby(True)
        assert (LAST_SUCCESS.value, ACTIVE_SINCE.value) == (None, None)
        assert REGISTRY.get_sample_value("waiqin_poller_standby") == 1

    def test_takeover_exports_the_takeover_time(self) -> None:
        """Taking the lead exports active-since = the takeover, standby 0."""
        health = state()
        health.set_standby(True)
        health.set_standby(False, now=at(500))
        assert ACTIVE_SINCE.value == at(500).timestamp()
        assert REGISTRY.get_sample_value("waiqin_poller_standby") == 0


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """A factory starting a real HealthServer on a free port, stopped after the test."""
    servers: list[HealthServer] = []

    async def make(health: HealthState, **kw: Any) -> str:
        server = HealthServer(HttpSettings(host="127.0.0.1", port=0), health, **kw)
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def fresh() -> HealthState:
    return HealthState(stuck_after_s=60, ready_window_s=60)


async def healthy() -> None:
    return None


async def broker_down() -> None:
    raise PublishUnavailable("Kafka brokers do not answer")


class Store:
    async def ping(self) -> None:
        await asyncio.Event().wait()  # never answers


class TestHealthServer:
    async def test_healthz_ok(self, serve: Any) -> None:
        """/healthz answers 200 {"status": "ok"} while the loop beats."""
        base = await serve(fresh())
        assert await get_json(f"{base}/healthz") == (200, {"status": "ok"})

    async def test_healthz_stuck(self, serve: Any) -> None:
        """/healthz answers 503 with the reason when the loop stopped beating."""
        health = fresh()
        health.beat(datetime.now(UTC) - timedelta(seconds=120))
        status, body = await get_json(f"{await serve(health)}/healthz")
        assert status == 503
        assert body["status"] == "stuck"

    async def test_readyz_ready(self, serve: Any) -> None:
        """/readyz answers 200 with ready=true when the state and every check are fine."""
        health = fresh()
        health.cycle_succeeded(datetime.now(UTC))
        status, body = await get_json(f"{await serve(health, checks=[healthy])}/readyz")
        assert status == 200
        assert (body["ready"], body["reasons"], body["consecutive_failures"]) == (True, [], 0)

    async def test_readyz_failed_cycle(self, serve: Any) -> None:
        """/readyz answers 503 after a failed cycle, with the error as the reason."""
        health = fresh()
        health.cycle_failed(PublishUnavailable("no brokers"))
        status, body = await get_json(f"{await serve(health)}/readyz")
        assert status == 503
        assert body["ready"] is False
        assert body["reasons"] == ["last 1 cycle(s) failed: PublishUnavailable: no brokers"]

    async def test_failing_check_turns_not_ready(self, serve: Any) -> None:
        """A check that raises makes /readyz 503 with its name and message."""
        base = await serve(fresh(), checks=[healthy, broker_down])
        status, body = await get_json(f"{base}/readyz")
        assert status == 503
        assert body["reasons"] == ["broker_down: PublishUnavailable: Kafka brokers do not answer"]

    async def test_readyz_keeps_chinese_readable(self, serve: Any) -> None:
        """Reasons quoting the vendor in Chinese arrive as Chinese, not as \\u escapes."""
        health = fresh()
        health.cycle_failed(PublishUnavailable("服务繁忙"))
        _, _, text = await get(f"{await serve(health)}/readyz")
        assert "服务繁忙" in text and "\\u" not in text

    async def test_readyz_and_metrics_are_redacted(self, serve: Any) -> None:
        """A secret inside an error message is masked on /readyz and on /metrics."""
        async def store_down() -> None:
            raise PublishUnavailable("cannot reach postgresql://u:hunter2-db@db/p")

        base = await serve(fresh(), checks=[store_down], redactor=Redactor(["hunter2-db", "leaky"]))
        _, _, ready = await get(f"{base}/readyz")
        assert "hunter2-db" not in ready and "***" in ready
        EVENTS_PUBLISHED.labels(type="leaky")
        _, _, text = await get(f"{base}/metrics")
        assert "leaky" not in text

    async def test_hanging_check_times_out(self, serve: Any) -> None:
        """A check that never answers is cut off by the timeout and reported by its owner's name."""
        base = await serve(fresh(), checks=[Store().ping], check_timeout_s=0.1)
        status, body = await get_json(f"{base}/readyz")
        assert status == 503
        assert body["reasons"] == ["Store.ping: no answer within 0.1s"]

    async def test_standby_ready(self, serve: Any) -> None:
        """A standby replica answers /readyz 200 with the reason 'standby'."""
        health = fresh()
        health.set_standby(True)
        assert await get_json(f"{await serve(health)}/readyz") == (
            200, {"ready": True, "reasons": ["standby"], "last_success_at": None,
                  "consecutive_failures": 0},
        )

    async def test_metrics(self, serve: Any) -> None:
        """/metrics serves the default registry in the Prometheus text format."""
        EVENTS_PUBLISHED.labels(type="TaskCreated").inc(0)
        status, content_type, text = await get(f"{await serve(fresh())}/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        assert 'waiqin_poller_events_published_total{type="TaskCreated"}' in text

    async def test_metrics_openmetrics(self, serve: Any) -> None:
        """A scraper asking for OpenMetrics gets it."""
        base = await serve(fresh())
        status, content_type, text = await get(
            f"{base}/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert status == 200
        assert content_type.startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")

    async def test_start_stop_idempotent(self) -> None:
        """start and stop may be called twice; after stop the port refuses connections."""
        server = HealthServer(HttpSettings(host="127.0.0.1", port=0), fresh())
        await server.start()
        await server.start()
        port = server.port
        await server.stop()
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(f"http://127.0.0.1:{port}/healthz")

    async def test_port_in_use(self, serve: Any) -> None:
        """Binding a taken port raises ServeError naming the address and leaves nothing running."""
        base = await serve(fresh())
        port = int(base.rsplit(":", 1)[1])
        server = HealthServer(HttpSettings(host="127.0.0.1", port=port), fresh())
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}.*POLLER_HTTP_PORT"):
            await server.start()
        await server.stop()
