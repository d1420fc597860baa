"""`waiqin-poller demo`: simulator + local broker + poller + live events, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from prometheus_client import REGISTRY
from rich.console import Console

from poller import app, logs
from poller.commands import tail
from poller.config import Settings
from poller.localbroker import TansuBroker
from poller.redact import Redactor
from poller.simulator import Simulator
from poller.simulator.churn import ChurnMix

OPENID, APPKEY = "demo-openid", "demo-appkey"
DEFAULT_HTTP_PORT = 8080
# The only files the demo keeps in its state directory: everything else there is left alone.
STATE_FILE = "demo-state.db"
# With little churn the screen would stay blank: say every so often that all is well.
HEARTBEAT_S = 10.0
POLL_INTERVAL_S = 2.0
# Every stored task is read again this often, so a change the vendor made without moving
# modify_time (a silent one) shows up within a minute or two, marked "found by sweep".
SWEEP_PERIOD_H = 0.02
LOOKBACK_MINUTES = 30  # the daemon's default, spelled out: the live view marks by it


async def run(*, churn_per_s: float, tasks: int, state_dir: str,
              silent_fraction: float = 0.0) -> None:
    """Run everything until Ctrl-C; the state starts fresh each time (the broker is in memory).

    `silent_fraction` of the simulated changes leave modify_time as it was, as the real vendor's
    sometimes do: only a reconciliation sweep finds those, later than the others.
    """
    mix = ChurnMix(silent=silent_fraction)  # ValueError for a fraction outside [0, 1]
    console = Console(highlight=False, soft_wrap=True)
    state = _fresh_state(Path(state_dir))
    async with _local_broker() as broker:
        await _run(console, broker, state, churn_per_s=churn_per_s, tasks=tasks, mix=mix)


@contextlib.asynccontextmanager
async def _local_broker() -> AsyncIterator[TansuBroker]:
    """A broker whose log directory is removed afterwards (no leftovers in the temp dir)."""
    with tempfile.TemporaryDirectory(prefix="waiqin-demo-broker-") as log_dir:
        broker = TansuBroker(Path(log_dir))
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


async def _run(console: Console, broker: TansuBroker, state: Path, *, churn_per_s: float,
               tasks: int, mix: ChurnMix) -> None:
    simulator = Simulator(OPENID, APPKEY, tasks=tasks, days=14, mix=mix)
    stop = asyncio.Event()
    heartbeat = _Heartbeat(console)
    try:
        base_url = await simulator.start("127.0.0.1", 0)
        settings = Settings.load({
            "WAIQIN_BASE_URL": base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot InitProducerId; production keeps it on
            "POLLER_STORE_URL": f"sqlite:///{state / STATE_FILE}",
            "POLLER_POLL_INTERVAL": str(POLL_INTERVAL_S), "POLLER_TYPE_REFRESH_SECONDS": "30",
            "POLLER_SWEEP_PERIOD_HOURS": str(SWEEP_PERIOD_H),
            "POLLER_LOOKBACK_MINUTES": str(LOOKBACK_MINUTES),
            # Loopback only: a laptop demo has no business listening on every interface.
            "POLLER_HTTP_HOST": "127.0.0.1", "POLLER_HTTP_PORT": str(_http_port()),
            "LOG_FORMAT": "console", "LOG_LEVEL": "WARNING",
        })
        redactor = Redactor([APPKEY])
        logs.configure(settings.log, redactor=redactor, stream=logs.current_stderr())
        silent = (f", {mix.silent:.0%} of them silent: the sweep (every "
                  f"{SWEEP_PERIOD_H * 3600:g} s) finds those, marked [{tail.SWEEP_MARK_STYLE}]"
                  f"{tail.SWEEP_MARK}[/]" if mix.silent else "")
        console.print(f"[bold]waiqin-poller demo[/]: simulator {base_url} ({tasks} tasks, "
                      f"{churn_per_s}/s mutations{silent}), broker {broker.bootstrap}, "
                      f"metrics http://{settings.http.host}:{settings.http.port}/metrics — Ctrl-C to stop\n")
        # Ctrl-C is how a demo ends: stop everything in order and exit 0.
        loop = asyncio.get_running_loop()
        for sig in app.HANDLED_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        daemon = asyncio.create_task(app.run(settings, stop=stop, handle_signals=False,
                                             redactor=redactor))
        viewer = asyncio.create_task(tail.run(settings, types=set(), task_ids=set(),
                                              from_beginning=True, dead_letters=False, stop=stop,
                                              printer=heartbeat.print,
                                              mark_sweep_finds=timedelta(minutes=LOOKBACK_MINUTES)))
        pulse = asyncio.create_task(heartbeat.run(stop))
        await simulator.start_churn(churn_per_s)
        try:
            done, _ = await asyncio.wait({daemon, viewer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a crash of either is shown, not swallowed
        finally:
            stop.set()
            await asyncio.gather(daemon, viewer, pulse, return_exceptions=True)
    finally:
        # The broker goes last and its clients' reconnect complaints are not news here.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        with contextlib.suppress(Exception):
            await simulator.stop()


class _Heartbeat:
    """Prints the event lines, and a status line whenever none came for HEARTBEAT_S seconds."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last_line = time.monotonic()

    def print(self, line: str) -> None:
        self._console.print(line)
        self._last_line = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_S)
            if not stop.is_set() and time.monotonic() - self._last_line >= HEARTBEAT_S:
                self.print(f"[dim]{status_line()}[/]")


def status_line() -> str:
    """What the poller did so far, from its own metrics: all is well, nothing changed."""
    def sample(name: str, **labels: str) -> int:
        return int(REGISTRY.get_sample_value(name, labels) or 0)

    ok = sample("waiqin_poller_cycles_total", outcome="success")
    failed = sample("waiqin_poller_cycles_total", outcome="failure")
    tasks = sample("waiqin_poller_store_tasks")
    return (f"· polling every {POLL_INTERVAL_S:g} s: {ok} cycles ok, {failed} failed, {tasks} tasks "
            f"in the store; no changes in the last {HEARTBEAT_S:g} s")


def _fresh_state(path: Path) -> Path:
    """The demo's state directory with the demo's own files removed, nothing else.

    The broker is in memory, so yesterday's snapshots would lie about what consumers saw; but
    the directory may be anything the user named (even `.`), so only STATE_FILE and its
    companions (-wal, -shm, -journal, .lock) go.
    """
    path.mkdir(parents=True, exist_ok=True)
    for companion in path.glob(f"{STATE_FILE}*"):
        if companion.is_file() and companion.name.removeprefix(STATE_FILE) in ("", "-wal", "-shm", "-journal", ".lock"):
            companion.unlink()
    return path


def _http_port() -> int:
    """8080 when free, else any free port (the demo must not fail on a busy laptop)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_HTTP_PORT))
            return DEFAULT_HTTP_PORT
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
