"""The daemon as a subprocess, configured only through the environment of docs/design.md §6."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from poller.localbroker import free_port
from tests.fixtures.broker import consume

OPENID, APPKEY = "it-openid", "it-appkey-秘密"


async def eventually(check: Callable[[], Any], *, timeout_s: float = 30.0,
                     interval_s: float = 0.1, what: str = "condition") -> Any:
    """Call `check()` (awaiting it when it is a coroutine) until it returns something truthy;
    fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)  # polling a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class Daemon:
    """`python -m poller run` with its own environment, log file and HTTP port."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "daemon") -> None:
        self.port = int(env.get("POLLER_HTTP_PORT") or free_port())
        self.env = {**env, "POLLER_HTTP_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def configured(cls, *, base_url: str, bootstrap: str, store_url: str, prefix: str,
                   log_dir: Path, **extra: str) -> Daemon:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "WAIQIN_BASE_URL": base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_REQUEST_TIMEOUT_MS": "5000",
            "POLLER_STORE_URL": store_url, "POLLER_TOPIC_PREFIX": prefix,
            "POLLER_POLL_INTERVAL": "0.3", "POLLER_TYPE_REFRESH_SECONDS": "1",
            "POLLER_MAX_BACKOFF_SECONDS": "1", "POLLER_SHUTDOWN_GRACE_SECONDS": "5",
            "WAIQIN_MAX_ATTEMPTS": "3", "LOG_LEVEL": "INFO", "LOG_FORMAT": "json",
            **extra,
        }
        return cls(env, log_dir)

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "poller", "run"], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a node failure."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    self.url + path, timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return 0, ""

    async def metric(self, name: str, labels: str = "") -> float:
        """A sample's value from /metrics (0 when absent or unreachable)."""
        status, text = await self.get("/metrics")
        if status != 200:
            return 0.0
        pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?") + r" (\S+)"
        match = re.search("^" + pattern + "$", text, re.M)
        return float(match.group(1)) if match else 0.0

    async def successful_cycles(self) -> float:
        return await self.metric("waiqin_poller_cycles_total", 'outcome="success"')

    async def wait_cycles(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait until `count` more cycles succeeded than now."""
        target = await self.successful_cycles() + count
        await eventually(lambda: self._reached(target), timeout_s=timeout_s,
                         what=f"{count} successful cycles\n{self.log()[-3000:]}")

    async def _reached(self, target: float) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return await self.successful_cycles() >= target

    async def wait_failures(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until `count` more cycles failed than now."""
        async def failures() -> float:
            return await self.metric("waiqin_poller_cycles_total", 'outcome="failure"')
        target = await failures() + count
        await eventually(lambda: _at_least(failures, target), timeout_s=timeout_s,
                         what=f"{count} failed cycles")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


async def _at_least(value: Callable[[], Awaitable[float]], target: float) -> bool:
    return await value() >= target


def headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def events_on(bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool],
                    timeout_s: float = 30.0) -> list[Any]:
    """Every record on `topic` once `until(records)` holds."""
    records = await consume(bootstrap, topic, timeout_s=timeout_s, until=until)
    assert until(records), f"condition not met on {topic}: {[headers(r).get('ce_type') for r in records]}"
    return records


def types_of(records: list[Any], task_id: str | None = None) -> list[str]:
    return [headers(r)["ce_type"] for r in records
            if task_id is None or headers(r)["ce_subject"] == task_id]
