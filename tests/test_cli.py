"""The operator commands as a user runs them: `waiqin-poller check|backfill|tail` subprocesses."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from poller.models import beijing_now
from poller.simulator import Simulator
from tests.fixtures.broker import TansuBroker
from tests.fixtures.simulator import APPKEY, OPENID


def env_for(sim: Simulator, broker: TansuBroker, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""), "WAIQIN_BASE_URL": sim.base_url,
        "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "POLLER_TOPIC_PREFIX": f"cli{abs(hash(tmp_path)) % 10**8}", "LOG_LEVEL": "WARNING",
        "WAIQIN_MAX_ATTEMPTS": "2", **extra,
    }


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture
async def sim(make_simulator: object) -> Simulator:
    return await make_simulator(tasks=30, days=3, seed=11)  # type: ignore[operator, no-any-return]


class TestCheck:
    async def test_all_good(self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """Every item gets a ✓ line and the exit code is 0."""
        code, out = await run_cli(env_for(sim, running_kafka_broker, tmp_path), "check")
        assert code == 0, out
        for item in ("configuration", "store", "API queryTask", "API queryTaskType", "Kafka"):
            assert f"✓ {item}" in out, out
        assert APPKEY not in out

    async def test_wrong_appkey_names_the_three_causes(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """A refused signature fails the check with the three causes and no secret."""
        env = env_for(sim, running_kafka_broker, tmp_path, WAIQIN_APPKEY="wrong-key-123")
        code, out = await run_cli(env, "check")
        assert code == 1
        assert "✗ API queryTask" in out
        assert "openid" in out and "allow-list" in out and "API授权" in out
        assert "wrong-key-123" not in out

    async def test_refused_task_types_is_a_warning(
            self, make_simulator: object, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """Without the queryTaskType grant the check warns and still passes."""
        sim = await make_simulator(tasks=5, days=1, grant_task_types=False)  # type: ignore[operator]
        code, out = await run_cli(env_for(sim, running_kafka_broker, tmp_path), "check")
        assert code == 0, out
        assert "! API queryTaskType" in out

    async def test_unreachable_kafka_fails(self, sim: Simulator, tmp_path: Path) -> None:
        """A broker that does not answer is a ✗ line and exit code 1."""
        dead = TansuBroker(tmp_path)  # never started: its port refuses connections
        env = env_for(sim, dead, tmp_path, KAFKA_REQUEST_TIMEOUT_MS="2000")
        code, out = await run_cli(env, "check")
        assert code == 1 and "✗ Kafka" in out


class TestBackfill:
    async def test_emits_only_real_changes(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """A backfill over an empty store emits every task once; the same backfill again, nothing."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        today = beijing_now().date()
        args = ("backfill", "--from", str(today - timedelta(days=3)), "--to", str(today))
        code, out = await run_cli(env, *args)
        assert code == 0, out
        assert "30 tasks read, 30 changed" in out
        code, out = await run_cli(env, *args)
        assert code == 0, out
        assert "30 tasks read, 0 changed, 0 events" in out


class TestTail:
    async def test_prints_events_human_readable(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """tail --from-beginning prints one line per event, filtered by type."""
        env = env_for(sim, running_kafka_broker, tmp_path, POLLER_START_MODE="replay")
        today = beijing_now().date()
        code, out = await run_cli(env, "backfill", "--from", str(today - timedelta(days=3)), "--to", str(today))
        assert code == 0, out
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "tail", "--from-beginning", "--type", "TaskCreated",
            env={**env, "COLUMNS": "200"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(30):
                while len(lines) < 30:
                    lines.append((await process.stdout.readline()).decode())
        finally:
            process.kill()
            await process.wait()
        assert all("TaskCreated" in line for line in lines), lines
        assert all("+08:00" in line for line in lines)
