"""The health and metrics HTTP server (/healthz, /readyz, /metrics) and the health state behind it.

Liveness means the poll loop is alive and not stuck; readiness means the poller is doing its
job: its last cycle did not fail, a cycle succeeded recently, and the store and brokers answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from poller.config import HttpSettings
from poller.errors import ServeError
from poller.metrics import ACTIVE_SINCE, IS_STANDBY, LAST_SUCCESS
from poller.redact import Redactor

Check = Callable[[], Awaitable[None]]
"""A readiness probe of a dependency (e.g. `store.ping`): returns if healthy, raises otherwise."""

# Readiness probes must answer well within Kubernetes' default probe timeout (1 s).
CHECK_TIMEOUT_S = 0.8


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class HealthState:
    """The one place the loop's health lives: heartbeat, cycle outcomes and leadership.

    The loop calls `beat()` at least every `stuck_after_s` seconds while working (once per
    page is plenty) and the `cycle_*` methods around each cycle. Times are aware datetimes.

    A standby replica (HA: another process holds the store's lock) reports ready=True with the
    reason "standby": it is healthy and able to take over, and a not-ready standby would stall
    rolling updates and count against PodDisruptionBudgets for no benefit. Its liveness ignores
    the heartbeat, since waiting for the lock is not being stuck.

    It also keeps the metrics alerts rely on: `waiqin_poller_standby`, and, only while this
    process is expected to poll, `..._active_since_timestamp_seconds` and
    `..._last_success_timestamp_seconds` (a standby exports neither: it does not poll).
    """

    def __init__(self, *, stuck_after_s: float, ready_window_s: float,
                 started_at: datetime | None = None) -> None:
        self.stuck_after = timedelta(seconds=stuck_after_s)
        self.ready_window = timedelta(seconds=ready_window_s)
        self.started_at = started_at or utc_now()
        self._last_beat_at = self.started_at
        self._task: asyncio.Task[Any] | None = None
        self._last_success_at: datetime | None = None
        self._cycle_started_at: datetime | None = None
        self._consecutive_failures = 0
        self._last_error: str | None = None
        self._is_standby = False
        self._active_since = self.started_at
        IS_STANDBY.set(0)
        ACTIVE_SINCE.set(self.started_at.timestamp())
        LAST_SUCCESS.clear()

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Tie liveness to the loop task: once it is done, the process is not live."""
        self._task = task

    def beat(self, now: datetime | None = None) -> None:
        """The loop is alive and making progress."""
        self._last_beat_at = now or utc_now()

    def set_standby(self, is_standby: bool, now: datetime | None = None) -> None:
        """Mark this replica as waiting for leadership (True) or polling (False).

        Taking over starts the clock anew: readiness and the alerts measure from then until the
        first successful cycle, not from a success of an earlier term or the process start.
        """
        if is_standby:
            self._last_success_at = None
            ACTIVE_SINCE.clear()
            LAST_SUCCESS.clear()
        elif self._is_standby:
            self._active_since = now or utc_now()
            ACTIVE_SINCE.set(self._active_since.timestamp())
        self._is_standby = is_standby
        IS_STANDBY.set(1 if is_standby else 0)

    def cycle_started(self, now: datetime | None = None) -> None:
        """A cycle begins (also a heartbeat)."""
        self._cycle_started_at = now or utc_now()
        self.beat(self._cycle_started_at)

    def cycle_succeeded(self, at: datetime) -> None:
        """A cycle completed: everything of its window is published and committed."""
        self._last_success_at = at
        self._consecutive_failures = 0
        self._last_error = None
        self._cycle_started_at = None
        LAST_SUCCESS.set(at.timestamp())
        self.beat()

    def cycle_failed(self, error: BaseException) -> None:
        """A cycle failed; readiness turns false until one succeeds."""
        self._consecutive_failures += 1
        self._last_error = f"{type(error).__name__}: {error}"
        self._cycle_started_at = None
        self.beat()

    @property
    def is_standby(self) -> bool:
        """True while another replica is the active poller."""
        return self._is_standby

    @property
    def last_success_at(self) -> datetime | None:
        """When the last cycle succeeded (None before the first)."""
        return self._last_success_at

    @property
    def last_beat_at(self) -> datetime:
        """The last heartbeat (the start time before the first)."""
        return self._last_beat_at

    @property
    def consecutive_failures(self) -> int:
        """Cycles failed in a row since the last success."""
        return self._consecutive_failures

    @property
    def last_error(self) -> str | None:
        """`Type: message` of the last failure, cleared by a success."""
        return self._last_error

    def is_live(self, now: datetime | None = None) -> bool:
        """The loop task is alive and (unless standby) beat within `stuck_after_s`."""
        return not self.liveness_problem(now)

    def liveness_problem(self, now: datetime | None = None) -> str | None:
        """Why the process is not live, or None when it is."""
        if self._task is not None and self._task.done():
            return "the poll loop has stopped"
        if self._is_standby:
            return None
        silent = (now or utc_now()) - self._last_beat_at
        if silent > self.stuck_after:
            return f"the poll loop has not made progress for {silent.total_seconds():.0f}s"
        return None

    def readiness(self, now: datetime | None = None) -> tuple[bool, list[str]]:
        """Whether the poller is doing its job, with the reasons (empty when plainly ready).

        Not ready after a failed cycle, or when no cycle succeeded within `ready_window_s` of
        the last success (or of the start or takeover, which gives the first cycle that much
        time).
        """
        if self._is_standby:
            return True, ["standby"]
        reasons = []
        if self._consecutive_failures:
            reasons.append(
                f"last {self._consecutive_failures} cycle(s) failed: {self._last_error}"
            )
        since = self._last_success_at or self._active_since
        if (now or utc_now()) - since > self.ready_window:
            at = since.isoformat(timespec="seconds")
            start = "the start" if self._active_since == self.started_at else "the takeover"
            reasons.append(f"last successful cycle at {at}" if self._last_success_at
                           else f"no successful cycle since {start} at {at}")
        return not reasons, reasons


class HealthServer:
    """aiohttp server for /healthz (liveness), /readyz (readiness) and /metrics (Prometheus).

    Every answer passes through `redactor`: /readyz repeats error messages, and neither it nor
    /metrics (both unauthenticated) may carry a secret.
    """

    def __init__(self, settings: HttpSettings, health: HealthState, *,
                 checks: Sequence[Check] = (), check_timeout_s: float = CHECK_TIMEOUT_S,
                 redactor: Redactor | None = None) -> None:
        self._settings = settings
        self._health = health
        self._checks = tuple(checks)
        self._check_timeout_s = check_timeout_s
        self._redactor = redactor or Redactor()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        if self._port is None:
            raise RuntimeError("HealthServer.port read before start()")
        return self._port

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on the configured host and port; idempotent.

        Raises ServeError, naming the address, when the port cannot be bound (nothing is left
        running).
        """
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        # Probes hit these paths every few seconds: an access log would drown the real lines.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._settings.host, self._settings.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self._settings.host}:{self._settings.port}"
            raise ServeError(f"cannot listen on {where} for /healthz, /readyz and /metrics: "
                             f"{exc.strerror or exc} (another process uses the port? set "
                             "POLLER_HTTP_PORT)") from exc
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = _bound_port(runner, self._settings.port)

    async def stop(self) -> None:
        """Stop listening and close connections; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self._health.liveness_problem(utc_now())
        if problem:
            return self._json({"status": "stuck", "reason": problem}, status=503)
        return self._json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        now = utc_now()
        ready, reasons = self._health.readiness(now)
        failures = await self._run_checks()
        body = {
            "ready": ready and not failures,
            "reasons": reasons + failures,
            "last_success_at": _iso(self._health.last_success_at),
            "consecutive_failures": self._health.consecutive_failures,
        }
        return self._json(body, status=200 if body["ready"] else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Honour the scraper's Accept header (OpenMetrics or the classic text format).
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(REGISTRY)
        if not self._redactor.is_empty:
            body = self._redactor.text(body.decode()).encode()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _json(self, body: dict[str, Any], *, status: int = 200) -> web.Response:
        # Reasons quote the vendor's messages, often Chinese: keep them readable, not \uXXXX.
        text = self._redactor.text(json.dumps(body, ensure_ascii=False))
        return web.json_response(text=text, status=status)

    async def _run_checks(self) -> list[str]:
        outcomes = await asyncio.gather(
            *(self._run_check(check) for check in self._checks)
        )
        return [outcome for outcome in outcomes if outcome]

    async def _run_check(self, check: Check) -> str | None:
        name = _check_name(check)
        try:
            async with asyncio.timeout(self._check_timeout_s):
                await check()
        except TimeoutError:
            return f"{name}: no answer within {self._check_timeout_s}s"
        except Exception as exc:  # any failure of a dependency means not ready, with its message
            return f"{name}: {type(exc).__name__}: {exc}"
        return None


def _check_name(check: Check) -> str:
    # A bound method such as publisher.ping reads as "KafkaPublisher.ping".
    owner = getattr(check, "__self__", None)
    name = getattr(check, "__name__", None) or repr(check)
    return f"{type(owner).__name__}.{name}" if owner is not None else name


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
