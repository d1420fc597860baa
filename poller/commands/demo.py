"""`waiqin-poller demo`: simulator + local broker + poller + live events, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from pathlib import Path

from rich.console import Console

from poller import app, logs
from poller.commands import tail
from poller.config import Settings
from poller.localbroker import TansuBroker
from poller.simulator import Simulator

OPENID, APPKEY = "demo-openid", "demo-appkey"
DEFAULT_HTTP_PORT = 8080


async def run(*, churn_per_s: float, tasks: int, state_dir: str) -> None:
    """Run everything until Ctrl-C; the state starts fresh each time (the broker is in memory)."""
    console = Console(highlight=False, soft_wrap=True)
    state = _fresh_dir(Path(state_dir))
    broker = TansuBroker(Path(tempfile.mkdtemp(prefix="waiqin-demo-broker-")))
    broker.start()
    simulator = Simulator(OPENID, APPKEY, tasks=tasks, days=14)
    stop = asyncio.Event()
    try:
        base_url = await simulator.start("127.0.0.1", 0)
        settings = Settings.load({
            "WAIQIN_BASE_URL": base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot InitProducerId; production keeps it on
            "POLLER_STORE_URL": f"sqlite:///{state / 'demo-state.db'}",
            "POLLER_POLL_INTERVAL": "2", "POLLER_TYPE_REFRESH_SECONDS": "30",
            "POLLER_HTTP_PORT": str(_http_port()), "LOG_FORMAT": "console", "LOG_LEVEL": "WARNING",
        })
        logs.configure(settings.log, secrets=[APPKEY])
        console.print(f"[bold]waiqin-poller demo[/]: simulator {base_url} ({tasks} tasks, "
                      f"{churn_per_s}/s mutations), broker {broker.bootstrap}, "
                      f"metrics http://127.0.0.1:{settings.http.port}/metrics — Ctrl-C to stop\n")
        # Ctrl-C is how a demo ends: stop everything in order and exit 0.
        loop = asyncio.get_running_loop()
        for sig in app.HANDLED_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        daemon = asyncio.create_task(app.run(settings, stop=stop, handle_signals=False))
        viewer = asyncio.create_task(tail.run(settings, types=set(), task_ids=set(),
                                              from_beginning=True, dead_letters=False, stop=stop,
                                              printer=console.print))
        await simulator.start_churn(churn_per_s)
        try:
            done, _ = await asyncio.wait({daemon, viewer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a crash of either is shown, not swallowed
        finally:
            stop.set()
            await asyncio.gather(daemon, viewer, return_exceptions=True)
    finally:
        # The broker goes last and its clients' reconnect complaints are not news here.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        with contextlib.suppress(Exception):
            await simulator.stop()
        broker.stop()


def _fresh_dir(path: Path) -> Path:
    """The demo's state directory, emptied: the broker is in memory, so old state would lie."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
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
