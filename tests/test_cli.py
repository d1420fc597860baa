"""The operator commands as a user runs them: `waiqin-poller check|status|backfill|snapshot|tail|simulator`
subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from poller.localbroker import accepts, free_port
from poller.models import beijing_now
from poller.simulator import Simulator
from tests.fixtures.broker import TansuBroker
from tests.fixtures.simulator import APPKEY, OPENID
from tests.integration.harness import Daemon, events_on, eventually, headers


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

    async def test_days_per_request_without_a_daemon(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """With no daemon, --days-per-request splits the range the command reads itself."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        today = beijing_now().date()
        code, out = await run_cli(env, "backfill", "--days-per-request", "2", "--from",
                                  str(today - timedelta(days=3)), "--to", str(today))
        assert code == 0, out
        assert "backfill #" not in out and "30 tasks read, 30 changed" in out
        assert sim.requests["queryTask"] == 2  # two sub-windows of two days, one page each


@contextlib.asynccontextmanager
async def running_daemon(env: dict[str, str], log_dir: Path, **extra: str) -> AsyncIterator[Daemon]:
    """The daemon with the commands' environment (same API, store, broker and topics), stopped
    without blocking the loop: the in-process simulator must answer its last requests."""
    daemon = Daemon({**env, "POLLER_POLL_INTERVAL": "0.3", "POLLER_MAX_BACKOFF_SECONDS": "1",
                     "POLLER_HTTP_PORT": str(free_port()), **extra}, log_dir).start()
    try:
        yield daemon
    finally:
        assert daemon.process is not None
        if daemon.process.poll() is None:
            await asyncio.to_thread(daemon.terminate)


def old_tasks(sim: Simulator, count: int) -> list[str]:
    """Live tasks last modified before today: outside the window of a running daemon."""
    today = str(beijing_now().date())
    return [t for t, task in sim.store.tasks.items()
            if task["modify_time"][:10] < today and str(task["status"]) == "1"][:count]


class TestLiveBackfill:
    async def test_the_daemon_runs_it_while_it_keeps_cycling(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """With a daemon leading, backfill hands the range over and shows plain progress lines
        (piped) until the daemon is done; the events arrive and the daemon's cycles go on.

        1. the daemon records the history silently; the sweep is off;
        2. feedback lands on three tasks of past days without moving modify_time: the window
           cannot see it;
        3. `backfill` over those days: a request, progress lines, done, exit 0;
        4. the FeedbackAdded events of the three tasks are on the topic, and cycles went on.
        """
        env = env_for(sim, running_kafka_broker, tmp_path, POLLER_SWEEP_PERIOD_HOURS="0")
        async with running_daemon(env, tmp_path) as daemon:
            await daemon.wait_cycles(2)
            changed = old_tasks(sim, 3)
            for task_id in changed:
                sim.store.add_feedback(task_id, touch=False)
            before = await daemon.successful_cycles()
            today = beijing_now().date()
            code, out = await run_cli(env, "backfill", "--from", str(today - timedelta(days=3)),
                                      "--to", str(today))
            assert code == 0, out + daemon.log()[-2000:]
            assert "requested from the daemon leading the store" in out
            assert "backfill #1: done, 4/4 days" in out, out
            assert re.search(r"done by the daemon: \d+ pages, \d+ tasks read, [1-9]\d* events", out)
            assert "\x1b[" not in out  # plain lines when piped, no terminal codes
            assert await daemon.successful_cycles() > before + 1

            def has_feedback(records: list[Any]) -> bool:
                return set(changed) <= {headers(r)["ce_subject"] for r in records
                                        if headers(r)["ce_type"] == "FeedbackAdded"}

            await events_on(running_kafka_broker.bootstrap, f"{env['POLLER_TOPIC_PREFIX']}.tasks",
                            until=has_feedback)

    async def test_detach_prints_the_id_and_status_follows_it(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """--detach prints only the request id on stdout and returns; `status --json` names the
        daemon's pid as the leader and shows the request until it is done."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        async with running_daemon(env, tmp_path) as daemon:
            await daemon.wait_cycles(1)
            today = beijing_now().date()
            code, out, err = await run_split(env, "backfill", "--detach", "--from",
                                             str(today - timedelta(days=2)), "--to", str(today))
            assert code == 0, err
            assert out == "1\n" and "backfill #1" in err

            async def backfill_done() -> dict[str, Any] | None:
                code, out, err = await run_split(env, "status", "--json")
                assert code == 0, err
                report: dict[str, Any] = orjson.loads(out)
                return report if report["backfills"][0]["state"] == "done" else None

            report = await eventually(backfill_done, what="the backfill to be done")
            assert daemon.process is not None
            assert report["leader"] == {"held": True, "pid": daemon.process.pid,
                                        "where": f"lock file {tmp_path / 'cli.db'}.lock",
                                        "since": None}
            assert report["backfills"][0]["days_done"] == report["backfills"][0]["days"] == 3
            assert report["first_run"]["complete"] and report["last_success"] is not None
            code, out = await run_cli({**env, "COLUMNS": "200"}, "status")
            assert code == 0 and f"pid {daemon.process.pid}" in out, out
        code, out = await run_cli({**env, "COLUMNS": "200"}, "status")
        assert code == 0 and "none: no daemon holds the store" in out, out

    async def test_a_progress_bar_on_a_terminal(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """On a terminal the progress is a bar redrawn in place, not a line per change."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        async with running_daemon(env, tmp_path) as daemon:
            await daemon.wait_cycles(1)
            today = beijing_now().date()
            code, screen = await run_on_terminal(
                {**env, "TERM": "xterm", "COLUMNS": "120"}, "backfill",
                "--from", str(today - timedelta(days=2)), "--to", str(today))
        assert code == 0, screen
        assert "━" in screen and "\x1b[" in screen  # the bar, drawn with terminal codes
        assert "3/3 days" in screen and "backfill #1: done," not in screen  # no plain lines

    async def test_without_a_daemon_detach_leaves_the_request_for_one(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """With no daemon, --detach still records the request (the next leader runs it) and
        status shows it pending with no leader."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        today = beijing_now().date()
        code, out, err = await run_split(env, "backfill", "--detach", "--from", str(today),
                                         "--to", str(today))
        assert code == 0 and out == "1\n", err
        code, out, err = await run_split(env, "status", "--json")
        report = orjson.loads(out)
        assert report["leader"]["held"] is False
        assert [(b["id"], b["state"]) for b in report["backfills"]] == [(1, "pending")]


class TestSnapshotCommand:
    async def test_publishes_with_a_count_and_a_bar_on_a_terminal(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """snapshot re-publishes every stored task: piped, one final count line; on a
        terminal, a progress bar too."""
        env = env_for(sim, running_kafka_broker, tmp_path)
        today = beijing_now().date()
        code, out = await run_cli(env, "backfill", "--from", str(today - timedelta(days=3)),
                                  "--to", str(today))
        assert code == 0, out
        code, out, err = await run_split(env, "snapshot")
        assert code == 0, err
        topic = f"{env['POLLER_TOPIC_PREFIX']}.tasks.state"
        assert out == "" and err.strip().splitlines()[-1] == (
            f"snapshot: 30 state records published to {topic}")
        assert "\x1b[" not in err
        code, screen = await run_on_terminal({**env, "TERM": "xterm", "COLUMNS": "120"},
                                             "snapshot", "--created-to", str(today))
        assert code == 0, screen
        assert "━" in screen and "30/30" in screen and "30 state records published" in screen

    @pytest.mark.parametrize(("args", "message"), [
        (("--task", "t1", "--created-from", "2026-01-01"), "do not combine"),
        (("--created-from", "2026-02-01", "--created-to", "2026-01-01"), "before --created-from"),
        (("--created-from", "2026-02-30",), "2026-02-30"),
    ])
    async def test_bad_arguments(self, args: tuple[str, ...], message: str, tmp_path: Path) -> None:
        """Arguments that cannot make a selection exit 2 naming the problem."""
        env = {"PATH": os.environ.get("PATH", ""), "WAIQIN_OPENID": "o",
               "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
        code, out = await run_cli(env, "snapshot", *args)
        assert code == 2 and message in out, out

    async def test_no_store_is_one_line(self, tmp_path: Path) -> None:
        """Pointed at a store nobody wrote, snapshot and status end in one line and create nothing."""
        env = {"PATH": os.environ.get("PATH", ""), "WAIQIN_OPENID": "o",
               "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'typo.db'}"}
        for command in ("snapshot", "status"):
            code, out, err = await run_split(env, command)
            assert one_line_failure(code, err) and "StoreNotFound: no store at sqlite:///" in err, err
            assert out == ""
        assert not (tmp_path / "typo.db").exists()


async def run_on_terminal(env: dict[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Exit code and everything `waiqin-poller ARGS` drew on a pseudo-terminal (stdout, stderr)."""
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=terminal, stderr=terminal)
    os.close(terminal)
    screen = bytearray()

    def read_all() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            screen.extend(chunk)

    try:
        await asyncio.wait_for(asyncio.gather(asyncio.to_thread(read_all), process.wait()), timeout_s)
    finally:
        os.close(controller)
    assert process.returncode is not None
    return process.returncode, screen.decode(errors="replace")


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


async def run_split(env: dict[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `waiqin-poller ARGS`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def no_json_lines(text: str) -> bool:
    return not any(line.lstrip().startswith('{"') for line in text.splitlines())


def one_line_failure(code: int, err: str) -> bool:
    """Exit 1 and a last line that starts with `waiqin-poller:`, no traceback, no warnings."""
    return (code == 1 and "Traceback" not in err and "Unclosed" not in err
            and err.strip().splitlines()[0].startswith("waiqin-poller:"))


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a black-holed address)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class TestCheckFailsFast:
    async def test_unanswering_api(self, sim: Simulator, running_kafka_broker: TansuBroker,
                                   tmp_path: Path, silent_server: int) -> None:
        """An API host that never answers is reported in seconds, by address and likely cause."""
        env = env_for(sim, running_kafka_broker, tmp_path,
                      WAIQIN_BASE_URL=f"http://127.0.0.1:{silent_server}", WAIQIN_MAX_ATTEMPTS="5",
                      WAIQIN_REQUEST_TIMEOUT_SECONDS="30")
        started = time.monotonic()
        code, out, err = await run_split(env, "check")
        elapsed = time.monotonic() - started
        assert code == 1
        assert elapsed < 30, elapsed  # the daemon's policy would take 5 × 30 s per endpoint
        assert f"✗ API queryTask (127.0.0.1:{silent_server})" in out
        assert "did not answer in time" in out
        assert no_json_lines(out) and no_json_lines(err)

    async def test_refused_api_port(self, sim: Simulator, running_kafka_broker: TansuBroker,
                                    tmp_path: Path) -> None:
        """A port nobody listens on is named, with 'refused the connection'."""
        port = free_port()
        env = env_for(sim, running_kafka_broker, tmp_path, WAIQIN_BASE_URL=f"http://127.0.0.1:{port}")
        code, out, _ = await run_split(env, "check")
        assert code == 1
        assert f"127.0.0.1:{port} refused the connection" in out

    async def test_idempotent_producer_refused(self, sim: Simulator, running_kafka_broker: TansuBroker,
                                               tmp_path: Path) -> None:
        """A broker that cannot run idempotent producers gets the setting to change, not [Error -1]."""
        env = env_for(sim, running_kafka_broker, tmp_path, KAFKA_ENABLE_IDEMPOTENCE="true")
        code, out, _ = await run_split(env, "check")
        assert code == 1
        assert "✗ Kafka" in out and "KAFKA_ENABLE_IDEMPOTENCE=false" in out


class TestOneLineFailures:
    async def test_run_on_a_taken_port(self, tmp_path: Path) -> None:
        """`run` with its HTTP port taken ends in one line naming the port."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {"PATH": os.environ.get("PATH", ""), "WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "a-key",
                   "POLLER_HTTP_HOST": "127.0.0.1", "POLLER_HTTP_PORT": str(port),
                   "POLLER_STORE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
            code, _, err = await run_split(env, "run")
        assert one_line_failure(code, err), err
        assert f"cannot listen on 127.0.0.1:{port}" in err

    async def test_tail_without_a_broker(self, tmp_path: Path) -> None:
        """`tail` with no broker ends in one line naming the address, no traceback or warning."""
        port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        code, _, err = await run_split(env, "tail")
        assert one_line_failure(code, err), err
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in err

    async def test_simulator_on_a_taken_port(self) -> None:
        """`simulator` on a taken port ends in one line naming it."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {"PATH": os.environ.get("PATH", "")}
            code, _, err = await run_split(env, "simulator", "--port", str(port))
        assert one_line_failure(code, err), err
        assert f"cannot listen on 127.0.0.1:{port}" in err

    async def test_misspelt_event_type(self) -> None:
        """`tail --type TaskAcepted` is refused with the right spelling, before anything runs."""
        code, _, err = await run_split({"PATH": os.environ.get("PATH", "")}, "tail", "--type", "TaskAcepted")
        assert code == 2
        assert "did you mean TaskAccepted?" in err


class TestHumanLogs:
    async def test_tail_without_credentials_keeps_timestamps(
            self, running_kafka_broker: TansuBroker) -> None:
        """tail needs no appkey, and its log lines keep their timestamps (no *** in the dates)."""
        env = {"PATH": os.environ.get("PATH", ""), "KAFKA_BOOTSTRAP_SERVERS": running_kafka_broker.bootstrap,
               "KAFKA_ENABLE_IDEMPOTENCE": "false", "POLLER_TOPIC_PREFIX": f"none{free_port()}",
               "LOG_LEVEL": "INFO"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "tail", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert process.stderr is not None
        try:
            async with asyncio.timeout(30):
                line = ""
                while "waiting_for_topic" not in line:
                    line = (await process.stderr.readline()).decode()
                    assert line, "tail ended early"
        finally:
            process.kill()
            await process.wait()
        assert re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", line), line
        assert "***" not in line and not line.startswith("{")

    async def test_backfill_logs_are_console_lines_on_stderr(
            self, sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path) -> None:
        """backfill's log lines are console lines on stderr: no JSON runs into its progress output."""
        env = env_for(sim, running_kafka_broker, tmp_path, LOG_LEVEL="INFO")
        today = beijing_now().date()
        code, out, err = await run_split(env, "backfill", "--from", str(today - timedelta(days=1)),
                                         "--to", str(today))
        assert code == 0, err
        assert "[info" in err  # console format
        assert no_json_lines(out) and no_json_lines(err)


def try_it_block() -> str:
    """The README's "Try it without Docker" shell block."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Try it without Docker", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash", 1)[1].split("```", 1)[0]


class TestTryIt:
    async def test_readme_flow_against_the_local_broker(self, tmp_path: Path) -> None:
        """The README's try-it commands work as written: broker, simulator, check, run, tail.

        1. `waiqin-poller broker` and `waiqin-poller simulator` start (on free ports here);
        2. the README's exports, ports swapped, make `check` pass;
        3. `run` polls into the broker and `tail --from-beginning` prints the events.
        """
        block = try_it_block()
        commands = [line.split("#")[0].strip() for line in block.splitlines()]
        assert "waiqin-poller broker &" in commands and "waiqin-poller check" in commands
        broker_port, sim_port, http_port = free_port(), free_port(), free_port()
        env = {"PATH": os.environ.get("PATH", ""), "COLUMNS": "200"}
        for line in commands:
            if line.startswith("export "):
                env.update(pair.split("=", 1) for pair in line.removeprefix("export ").split())
        env = {k: v.replace(":9092", f":{broker_port}").replace(":8090", f":{sim_port}") for k, v in env.items()}
        env.update(POLLER_STORE_URL=f"sqlite:///{tmp_path / 'try.db'}", POLLER_HTTP_PORT=str(http_port),
                   POLLER_POLL_INTERVAL="1", POLLER_START_MODE="replay")
        started: list[asyncio.subprocess.Process] = []

        async def background(*args: str) -> asyncio.subprocess.Process:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "poller", *args, env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            started.append(process)
            return process

        try:
            broker = await background("broker", "--port", str(broker_port))
            assert broker.stdout is not None
            first = (await asyncio.wait_for(broker.stdout.readline(), 30)).decode()
            assert f"127.0.0.1:{broker_port}" in first
            await background("simulator", "--port", str(sim_port), "--tasks", "20", "--churn", "2")
            await eventually(lambda: accepts(sim_port), what="the simulator")
            code, out, err = await run_split(env, "check")
            assert code == 0, out + err
            await background("run")
            tail = await background("tail", "--from-beginning")
            assert tail.stdout is not None
            line = await asyncio.wait_for(tail.stdout.readline(), 60)
            assert b"TaskCreated" in line
        finally:
            # Last started, first stopped (`kill %4 %3 %2 %1`): the daemon finishes its cycle
            # while the broker still takes its records; stopped first, the broker would leave
            # it waiting out its shutdown grace.
            for process in reversed(started):
                if process.returncode is None:
                    process.send_signal(signal.SIGINT)
                await asyncio.wait_for(process.wait(), 30)
        assert started[0].returncode == 0  # the broker ends cleanly on Ctrl-C


async def admin_json(base_url: str, path: str) -> Any:
    """GET an admin endpoint; None while the server is not answering yet."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/admin{path}") as r:
            return await r.json()
    except aiohttp.ClientConnectionError:
        return None


class TestSimulatorCommand:
    async def test_bad_habits_from_flags(self) -> None:
        """`waiqin-poller simulator` serves the habits its flags ask for: the churn mix, seeded
        late feedback and the partial-data schedule, with silent churn never moving
        modify_time."""
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "simulator", "--port", str(port), "--tasks", "40",
            "--churn", "100", "--churn-silent", "1", "--churn-revert", "0.2",
            "--late-feedback", "0.5", "--partial-fraction", "0.5", "--partial-every", "300",
            "--partial-for", "20", env={"PATH": os.environ.get("PATH", "")},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        base_url = f"http://127.0.0.1:{port}"
        try:
            summary = await eventually(lambda: admin_json(base_url, "/"), timeout_s=30,
                                       what="the simulator to answer")
            assert summary["churn_mix"]["silent"] == 1.0
            assert summary["churn_mix"]["revert"] == 0.2
            assert summary["partial"] == {"fraction": 0.5, "every_s": 300.0, "for_s": 20.0}
            ledger = await eventually(lambda: _at_least(admin_json(base_url, "/ledger"), 20),
                                      timeout_s=30, what="20 churn mutations")
            changes = [e for e in ledger if e["kind"] != "create"]
            assert changes and not any(e["modify_time_moved"] for e in changes)
        finally:
            process.terminate()
            await process.wait()

    @pytest.mark.parametrize("args,message", [
        (("--churn-silent", "0.7", "--churn-past", "0.6"), "silent + past must not exceed 1"),
        (("--churn-revert", "2"), "'--churn-revert': 2.0 is not in the range"),
        (("--partial-fraction", "0.5", "--partial-every", "10", "--partial-for", "20"),
         "--partial-for (20s) must not exceed --partial-every (10s)"),
    ])
    async def test_bad_flags(self, args: tuple[str, ...], message: str) -> None:
        """Contradictory or out-of-range habit flags exit 2 with one clear line, no traceback."""
        code, output = await run_cli({"PATH": os.environ.get("PATH", "")}, "simulator",
                                     "--port", "0", *args)
        assert code == 2 and message in output and "Traceback" not in output


async def _at_least(entries: Awaitable[Any], count: int) -> Any:
    found = await entries
    return found if found and len(found) >= count else None
