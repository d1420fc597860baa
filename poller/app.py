"""The daemon: builds the components, starts and stops them in order, owns the signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import structlog

from poller.config import Settings
from poller.errors import PollerError
from poller.fetch import WaiqinClient
from poller.http import HealthServer, HealthState
from poller.loop import ApiLimits, Poller
from poller.publish import KafkaPublisher
from poller.redact import Redactor
from poller.store import open_store

log = structlog.get_logger(__name__)

# SIGTERM is what Kubernetes sends; SIGINT is Ctrl-C. A second one forces the exit.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Liveness fails when the loop has not beaten for this many poll intervals (plus a floor).
STUCK_AFTER_INTERVALS = 10
STUCK_FLOOR_S = 120.0


# Every page allocates and drops thousands of small JSON containers, and CPython's default
# gen0 threshold (700) runs a collection every few records: about a fifth of the unchanged
# path's CPU (benchmarks/RESULTS.md). Collections still happen, just per page, not per record.
GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect young garbage per page rather than per record (see GC_GEN0_THRESHOLD)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def api_limits(settings: Settings) -> ApiLimits:
    """The client's settings the cycle plans with."""
    return ApiLimits(rows=settings.waiqin.page_rows, rate_per_s=settings.waiqin.rate_limit_per_s,
                     daily_budget=settings.waiqin.daily_request_budget)


def event_source(settings: Settings) -> str:
    """The CloudEvents `source`: which enterprise (openid) on which Waiqin365 cloud."""
    return f"{settings.waiqin.base_url}/api/cusTask/{settings.waiqin.openid}"


async def run(settings: Settings, *, stop: asyncio.Event | None = None,
              handle_signals: bool = True, redactor: Redactor | None = None) -> None:
    """Run the daemon until `stop` is set or SIGTERM/SIGINT arrives.

    Start order: health server (so probes answer while the rest waits out an outage), store,
    publisher, API client, poller; teardown runs in reverse. A store or broker that is down at
    start is retried with backoff, never a reason to exit.
    """
    stop = stop or asyncio.Event()
    tune_gc()
    poll = settings.poll
    health = HealthState(
        stuck_after_s=max(STUCK_FLOOR_S, STUCK_AFTER_INTERVALS * poll.poll_interval_s),
        ready_window_s=poll.ready_after_failed_intervals * poll.poll_interval_s + 60.0,
    )
    store = open_store(settings.store)
    publisher = KafkaPublisher(settings.kafka, settings.topics)
    client = WaiqinClient(settings.waiqin)
    poller = Poller(poll, client=client, store=store, publisher=publisher, health=health,
                    source=event_source(settings), limits=api_limits(settings),
                    max_message_bytes=settings.kafka.max_message_bytes,
                    state_topic=settings.topics.state_enabled)
    async with AsyncExitStack() as stack:
        server = HealthServer(settings.http, health, checks=[store.ping, publisher.ping],
                              redactor=redactor or Redactor.from_settings(settings))
        await server.start()
        stack.push_async_callback(server.stop)
        log.info("http_started", port=server.port)
        poller_task: asyncio.Task[None] | None = None

        def request_stop() -> None:
            if stop.is_set() and poller_task is not None:
                log.warning("forced_exit")
                poller_task.cancel()
            stop.set()
            poller.stop()

        if handle_signals:
            stack.enter_context(_signals_handled(request_stop))
        for name, component in (("store", store), ("publisher", publisher)):
            if not await _start_with_retry(name, component.start, stop, health, poll.max_backoff_s):
                return
            stack.push_async_callback(component.stop)
        await client.start()
        stack.push_async_callback(client.stop)
        poller_task = asyncio.create_task(poller.run(), name="poller")
        stack.push_async_callback(_finish, poller, poller_task, poll.shutdown_grace_s)
        health.watch(poller_task)
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({poller_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        log.info("stopping")


async def _finish(poller: Poller, task: asyncio.Task[None], grace_s: float) -> None:
    """Let the in-flight cycle finish within the grace period, then cancel it."""
    poller.stop()
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if not done:
        # Say where it hung: the in-flight page is cancelled (its commit is shielded).
        log.warning("shutdown_grace_exceeded", grace_s=grace_s, awaiting=_awaiting(task))
        task.cancel()
        await asyncio.wait({task})
    log.info("stopped")
    if not task.cancelled():
        task.result()  # a crash of the loop is raised, not swallowed


def _awaiting(task: asyncio.Task[None]) -> list[str]:
    """The chain of awaits a task is stuck in, innermost last (get_stack shows only the top)."""
    chain: list[str] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return chain


async def _start_with_retry(name: str, start: Callable[[], Awaitable[None]], stop: asyncio.Event,
                            health: HealthState, max_backoff_s: float) -> bool:
    """Start a component, waiting out any failure with backoff; False if stopped meanwhile.

    Whatever the failure (down, refusing our credentials, a corrupt file), retrying with a
    backoff is what an always-on daemon does: the operator fixes the cause while probes show
    why (a crash loop would only add restarts to the noise).
    """
    delay = 1.0
    while not stop.is_set():
        health.beat()
        try:
            await start()
            return True
        except PollerError as exc:
            health.cycle_failed(exc)
            log.warning("component_unavailable", component=name, error=str(exc),
                        error_type=type(exc).__name__, retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(max_backoff_s, delay * 2)
    return False


@contextlib.contextmanager
def _signals_handled(handler: Callable[[], None]):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    for sig in HANDLED_SIGNALS:
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)
