"""Tests for poller.commands.check, in process against the simulator and the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.commands import check
from poller.config import Settings
from poller.localbroker import free_port
from poller.redact import Redactor
from poller.simulator import Simulator
from tests.fixtures.broker import TansuBroker
from tests.fixtures.simulator import APPKEY, OPENID


def settings_for(sim: Simulator, broker: TansuBroker, tmp_path: Path, **extra: str) -> Settings:
    return Settings.load({
        "WAIQIN_BASE_URL": sim.base_url, "WAIQIN_OPENID": OPENID, "WAIQIN_APPKEY": APPKEY,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'check.db'}", "POLLER_TOPIC_PREFIX": f"chk{free_port()}",
        **extra,
    })


class TestCheck:
    async def test_every_item_passes(self, make_simulator: object, running_kafka_broker: TansuBroker,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With everything reachable each item gets a ✓ line naming where it looked."""
        sim = await make_simulator(tasks=3, days=1)  # type: ignore[operator]
        settings = settings_for(sim, running_kafka_broker, tmp_path)
        assert await check.run(settings, Redactor.from_settings(settings))
        out = capsys.readouterr().out
        assert f"✓ API queryTask (127.0.0.1:{sim.base_url.rsplit(':', 1)[1]})" in out
        assert f"✓ Kafka ({running_kafka_broker.bootstrap})" in out
        assert "✓ API queryTaskType" in out and "✓ store (sqlite:///" in out
        assert ("✓ API requests: about 1,441 requests a day (window 1,440, sweep 1: 1 page a "
                "pass); no WAIQIN_DAILY_REQUEST_BUDGET") in out

    async def test_projection_over_the_budget_is_a_warning(
            self, make_simulator: object, running_kafka_broker: TansuBroker, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        """Projected requests above WAIQIN_DAILY_REQUEST_BUDGET warn (the interval will be
        stretched) without failing the check."""
        sim = await make_simulator(tasks=3, days=1)  # type: ignore[operator]
        settings = settings_for(sim, running_kafka_broker, tmp_path, WAIQIN_DAILY_REQUEST_BUDGET="1000",
                                POLLER_POLL_INTERVAL="30")
        assert await check.run(settings, Redactor.from_settings(settings))
        out = capsys.readouterr().out
        assert ("! API requests: about 2,881 requests a day (window 2,880, sweep 1: 1 page a "
                "pass); WAIQIN_DAILY_REQUEST_BUDGET 1,000, over it: the interval will be stretched") in out

    async def test_refused_signature_skips_task_types(
            self, make_simulator: object, running_kafka_broker: TansuBroker, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A refused queryTask fails, names the three causes, hides the appkey and skips queryTaskType."""
        sim = await make_simulator(tasks=3, days=1)  # type: ignore[operator]
        settings = settings_for(sim, running_kafka_broker, tmp_path, WAIQIN_APPKEY="wrong-appkey-42")
        assert not await check.run(settings, Redactor.from_settings(settings))
        out = capsys.readouterr().out
        assert "✗ API queryTask" in out and "allow-list" in out
        assert "! API queryTaskType" in out and "not tried" in out
        assert "wrong-appkey-42" not in out

    async def test_cleartext_remote_base_is_a_warning(
            self, make_simulator: object, running_kafka_broker: TansuBroker, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
        """A plain-http base on a remote host is warned about (and, unreachable, named)."""
        sim = await make_simulator(tasks=1, days=1)  # type: ignore[operator]
        settings = settings_for(sim, running_kafka_broker, tmp_path,
                                WAIQIN_BASE_URL="http://no-such-host.invalid")
        assert not await check.run(settings, Redactor.from_settings(settings))
        out = capsys.readouterr().out
        assert "! configuration: WAIQIN_BASE_URL is plain http" in out
        assert "cannot resolve no-such-host.invalid" in out
