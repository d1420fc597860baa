"""Shared pieces of the benchmark and soak scripts: processes, settings, an in-process Poller."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller import app  # noqa: E402
from poller.config import Settings  # noqa: E402
from poller.fetch import WaiqinClient  # noqa: E402
from poller.http import HealthState  # noqa: E402
from poller.localbroker import accepts, free_port  # noqa: E402
from poller.loop import Poller  # noqa: E402
from poller.pages import TaskSource  # noqa: E402
from poller.publish import MemoryPublisher, Publisher  # noqa: E402
from poller.store import open_store  # noqa: E402
from poller.store.base import Leadership, SnapshotStore  # noqa: E402

OPENID, APPKEY = "bench-openid", "bench-appkey"


def wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Poll the port until it accepts connections (the simulator seeds its tasks first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        if accepts(port):
            return
        time.sleep(0.05)  # polling a port with a deadline
    raise RuntimeError(f"nothing listening on {port} after {timeout_s}s")


def simulator_process(tasks: int, days: int, log: Path, *, drift: bool = True
                      ) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m poller simulator` in its own process (its CPU is not the poller's)."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "poller", "simulator", "--port", str(port), "--tasks", str(tasks),
             "--days", str(days), "--openid", OPENID, "--appkey", APPKEY,
             "--drift" if drift else "--no-drift"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    wait_port(port, process)
    return process, f"http://127.0.0.1:{port}"


async def simulator_requests(base_url: str) -> dict[str, int]:
    """API requests the simulator has served, by endpoint (its admin summary)."""
    async with aiohttp.ClientSession() as session, session.get(base_url + "/admin/") as resp:
        summary: dict[str, Any] = await resp.json()
    return {k: int(v) for k, v in summary["requests"].items()}


def settings(base_url: str, store_url: str, bootstrap: str = "127.0.0.1:1", **extra: str) -> Settings:
    env = {
        "WAIQIN_BASE_URL": base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
        # The benchmark measures the poller, not the (configurable) politeness towards the API.
        "WAIQIN_RATE_LIMIT_PER_SECOND": "10000",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "POLLER_STORE_URL": store_url, "POLLER_TOPIC_PARTITIONS": "1", "LOG_LEVEL": "WARNING",
        **extra,
    }
    return Settings.load(env)


async def in_process_poller(cfg: Settings, *, publisher: Publisher | None = None,
                            source: TaskSource | None = None
                            ) -> tuple[Poller, WaiqinClient, SnapshotStore, Leadership]:
    """A started Poller and its store's leadership (acquired), for calling `scan` directly
    (tuned like the daemon)."""
    app.tune_gc()
    store = open_store(cfg.store)
    await store.start()
    client = WaiqinClient(cfg.waiqin)
    await client.start()
    publisher = publisher or MemoryPublisher()
    await publisher.start()
    poller = Poller(cfg.poll, client=source or client, store=store, publisher=publisher,
                    health=HealthState(stuck_after_s=600, ready_window_s=600), source="bench")
    lease = store.leadership()
    assert await lease.acquire(asyncio.Event())
    return poller, client, store, lease
