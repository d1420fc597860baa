"""No secret in any output: a distinct secret planted in every place one can be configured, then
every output of the daemon and the commands is searched for each of them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from poller.localbroker import free_port
from poller.simulator import Simulator
from tests.integration.harness import Daemon, eventually

# One distinct secret per place a secret can be configured.
APPKEY = "appkey-S1-不可见"
SASL_PASSWORD = "sasl-pw-S2"
SSL_KEY_PASSWORD = "ssl-key-pw-S3"
DB_USERINFO_PASSWORD = "db:pw@S4/x"  # needs percent-encoding in the URL
DB_QUERY_PASSWORD = "db-query-pw-S5"
DB_SSL_PASSWORD = "db-sslkey-pw-S6"
DB_KEYWORD_PASSWORD = "db-keyword-pw-S7"
SECRETS = (APPKEY, SASL_PASSWORD, SSL_KEY_PASSWORD, DB_USERINFO_PASSWORD, DB_QUERY_PASSWORD,
           DB_SSL_PASSWORD, DB_KEYWORD_PASSWORD)


def planted_env(sim: Simulator, tmp_path: Path) -> dict[str, str]:
    """Every secret in its place; the store and the brokers refuse connections, so errors happen."""
    closed = free_port()
    store_url = (f"postgresql://poller:{quote(DB_USERINFO_PASSWORD, safe='')}@127.0.0.1:{closed}/poller"
                 f"?password={DB_QUERY_PASSWORD}&sslpassword={DB_SSL_PASSWORD}")
    return {
        "PATH": os.environ.get("PATH", ""),
        "WAIQIN_BASE_URL": sim.base_url, "WAIQIN_OPENID": sim.openid, "WAIQIN_APPKEY": APPKEY,
        "WAIQIN_MAX_ATTEMPTS": "2",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "poller", "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "KAFKA_SSL_PASSWORD": SSL_KEY_PASSWORD, "KAFKA_REQUEST_TIMEOUT_MS": "2000",
        "POLLER_STORE_URL": store_url, "POLLER_POLL_INTERVAL": "0.3",
        "POLLER_MAX_BACKOFF_SECONDS": "1", "POLLER_SHUTDOWN_GRACE_SECONDS": "2",
        "LOG_LEVEL": "DEBUG",
    }


async def command(env: dict[str, str], *args: str) -> str:
    """stdout and stderr of `waiqin-poller ARGS`, whatever its exit code."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    return out.decode(errors="replace") + err.decode(errors="replace")


def leaked(text: str) -> list[str]:
    """The planted secrets (as written or percent-encoded) that occur in `text`."""
    return [s for s in SECRETS if s in text or quote(s, safe="") in text]


@pytest.fixture
async def sim(make_simulator: object) -> Simulator:
    # The simulator knows another appkey: every signed request is refused (auth errors happen).
    return await make_simulator(tasks=5, days=1)  # type: ignore[operator, no-any-return]


class TestNoSecretInAnyOutput:
    async def test_daemon_logs_readyz_and_metrics(self, sim: Simulator, tmp_path: Path) -> None:
        """While the store and brokers refuse it, the daemon's logs, /readyz and /metrics hold no secret."""
        daemon = Daemon(planted_env(sim, tmp_path), tmp_path)
        pages: list[str] = []
        with daemon:
            async def failed_visibly() -> bool:
                status, body = await daemon.get("/readyz")
                _, metrics = await daemon.get("/metrics")
                pages.extend((body, metrics))
                return status == 503 and "component_unavailable" in daemon.log()

            await eventually(failed_visibly, timeout_s=30, what="the daemon reporting its outage")
        output = daemon.log()
        assert "Traceback" not in output
        assert leaked(output) == [], output[-3000:]
        assert leaked("".join(pages)) == []

    @pytest.mark.parametrize(
        "args", [("check",), ("tail",), ("backfill", "--from", "2024-01-01", "--to", "2024-01-02")],
        ids=["check", "tail", "backfill"])
    async def test_commands(self, sim: Simulator, tmp_path: Path, args: tuple[str, ...]) -> None:
        """check, tail and backfill report the failures without a secret."""
        output = await command(planted_env(sim, tmp_path), *args)
        assert "✗" in output or "waiqin-poller:" in output, output
        assert leaked(output) == [], output

    async def test_keyword_dsn(self, sim: Simulator, tmp_path: Path) -> None:
        """A libpq key=value store DSN is refused by the configuration without echoing its password."""
        env = {**planted_env(sim, tmp_path),
               "POLLER_STORE_URL": f"host=127.0.0.1 user=poller password={DB_KEYWORD_PASSWORD}"}
        output = await command(env, "check")
        assert "POLLER_STORE_URL" in output
        assert leaked(output) == [], output
