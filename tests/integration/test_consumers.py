"""A consumer that joins late and the PostgreSQL mirror end equal to the API's tasks after churn,
a kill -9 and a broker outage (daemon subprocess, simulator over HTTP, real broker, both stores)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from poller import consumer, normalise
from poller.localbroker import TansuBroker
from poller.models import Task
from poller.simulator import Simulator
from poller.simulator.churn import ChurnMix
from poller.simulator.generate import TIME_FORMAT
from tests.fixtures.broker import BrokerFactory, consume
from tests.integration.harness import APPKEY, OPENID, Daemon, eventually

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "e2e"
STATE_TOPIC = f"{PREFIX}.tasks.state"
MIRROR_TABLE = "mirror_tasks"
DAEMON_ENV = {
    # replay: the first run publishes every task, so the state topic holds them all (a baseline
    # first run is silent and leaves the untouched tasks to `snapshot`).
    "POLLER_START_MODE": "replay",
    # A sweep pass every ~7 s: a hard-deleted task is confirmed gone within the test.
    "POLLER_SWEEP_PERIOD_HOURS": "0.002", "WAIQIN_RATE_LIMIT_PER_SECOND": "50",
    "POLLER_TOPIC_PARTITIONS": "3",
}
CHURN_PER_S = 6.0
# The ordinary mix (creates, feedback, status changes, reassignments, soft deletes and
# restores) plus reverts and a few hard deletes.
MIX = ChurnMix(revert=0.15, hard_delete=0.04)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(OPENID, APPKEY, tasks=60, days=20, seed=12)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> TansuBroker:
    """A private broker: this test pauses it, which must not stall anyone else's test."""
    return broker_factory()


@pytest.fixture
def daemon_for(sim: Simulator, broker: TansuBroker, store_url: str, tmp_path: Path
               ) -> Callable[..., Daemon]:
    def make(**extra: str) -> Daemon:
        return Daemon.configured(base_url=sim.base_url, bootstrap=broker.bootstrap,
                                 store_url=store_url, prefix=PREFIX, log_dir=tmp_path,
                                 **{**DAEMON_ENV, **extra})
    return make


class LateConsumer:
    """poller.consumer as a late consumer uses it: bootstrap from the state topic, then follow
    the task topic in the background."""

    def __init__(self, bootstrap: str) -> None:
        self.reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       enable_auto_commit=False)
        self.boot: consumer.Bootstrap | None = None
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> LateConsumer:
        await self.reader.start()
        self.boot = await consumer.bootstrap(self.reader, prefix=PREFIX)
        self._following = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        assert self.boot is not None
        async for _ in consumer.follow(self.reader, self.boot, timeout_ms=200):
            pass  # the library keeps the view; the deliveries themselves are not needed here

    @property
    def stream(self) -> consumer.TaskStream:
        assert self.boot is not None
        return self.boot.stream

    def tasks(self) -> dict[str, dict[str, Any]]:
        """The view's tasks, comparable; raises what stopped the follower, if anything did."""
        assert self.boot is not None and self._following is not None
        if self._following.done():
            self._following.result()
        return {task_id: comparable(task) for task_id, task in self.boot.view.tasks().items()}

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        await self.reader.stop()


@contextlib.asynccontextmanager
async def late_consumer(bootstrap: str) -> AsyncIterator[LateConsumer]:
    made = LateConsumer(bootstrap)
    try:
        yield await made.start()
    finally:
        await made.stop()


@contextlib.asynccontextmanager
async def mirror(bootstrap: str, dsn: str, log: Path) -> AsyncIterator[Callable[[], Any]]:
    """examples/mirror_postgres.py run as a user runs it; yields a reader of its table.

    Ends it with Ctrl-C (SIGINT) and checks that it exits 0.
    """
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "mirror_postgres.py"), "--bootstrap",
            bootstrap, "--dsn", dsn, "--prefix", PREFIX, "--table", MIRROR_TABLE,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def rows() -> dict[str, dict[str, Any]]:
        if process.returncode is not None:
            raise AssertionError(f"the mirror exited with {process.returncode}: "
                                 f"{tail_of(log)}")
        conn = await asyncpg.connect(dsn)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", MIRROR_TABLE) is None:
                return {}
            found = await conn.fetch(f"SELECT task_id, task FROM {MIRROR_TABLE}")
        finally:
            await conn.close()
        return {row["task_id"]: comparable(Task.model_validate(json.loads(row["task"])))
                for row in found}

    try:
        yield rows
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0, tail_of(log)


def tail_of(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def comparable(task: BaseModel) -> dict[str, Any]:
    """A task as JSON, without modify_time: a change of modify_time alone is no observation
    with events (docs/design.md §4), so the state may rightly hold an older one."""
    dump = task.model_dump(mode="json")
    dump.pop("modify_time", None)
    if not dump.get("truncated", True):
        del dump["truncated"]  # a state record's "nothing was cut"
    return dump


def api_tasks(sim: Simulator) -> dict[str, dict[str, Any]]:
    """Every task the API serves now, normalised as the poller normalises what it reads."""
    return {task_id: comparable(normalise.to_task(normalise.task(sim.get_task(task_id)).document))
            for task_id in sim.store.tasks}


def differences(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> list[str]:
    """Task by task, what `got` has wrong: missing, extra (a hard-deleted task kept), or which
    fields differ."""
    found = [f"missing {task_id}" for task_id in sorted(expected.keys() - got.keys())]
    found += [f"extra {task_id}" for task_id in sorted(got.keys() - expected.keys())]
    for task_id in sorted(expected.keys() & got.keys()):
        want, have = expected[task_id], got[task_id]
        fields = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        if fields:
            found.append(f"{task_id} differs in {fields}: api {[want.get(k) for k in fields]} "
                         f"vs {[have.get(k) for k in fields]}")
    return found


def stream_problems(records: Iterable[Any]) -> list[str]:
    """Where the task topic breaks its promise (docs/design.md §5): a re-sent ce_id with another
    payload, one ce_sequence of a task with two different tasks, a task's record going back in
    ce_sequence without being a re-send, or a task whose ce_sequences skip one."""
    problems: list[str] = []
    sent: dict[str, bytes | None] = {}
    content: dict[tuple[str, int], dict[str, Any]] = {}
    last: dict[str, int] = {}
    sequences: defaultdict[str, set[int]] = defaultdict(set)
    for record in records:  # a task's records share a partition: read in offset order
        head = consumer.envelope(record)
        if head.ce_id in sent:
            if sent[head.ce_id] != record.value:
                problems.append(f"{head.ce_id} re-sent with another payload")
            continue
        sent[head.ce_id] = record.value
        if head.sequence is None:
            continue
        task = consumer.decode(record, head).task
        assert task is not None, head
        seen = content.setdefault((head.key, head.sequence), comparable(task))
        if seen != comparable(task):
            problems.append(f"{head.key} sequence {head.sequence} carries two different tasks")
        if head.sequence < last.get(head.key, 0):
            problems.append(f"{head.key} went back from {last[head.key]} to {head.sequence} "
                            f"({head.ce_type} at offset {record.offset})")
        last[head.key] = max(head.sequence, last.get(head.key, 0))
        sequences[head.key].add(head.sequence)
    problems += [f"{task_id} skips sequences: {sorted(set(range(1, max(seqs) + 1)) - seqs)}"
                 for task_id, seqs in sequences.items() if seqs != set(range(1, max(seqs) + 1))]
    return problems


async def equal_to_api(sim: Simulator, views: Mapping[str, Callable[[], Any]],
                       timeout_s: float) -> None:
    """Wait until every view (name -> a function, maybe async, returning comparable tasks by
    id) equals the API's tasks; fail with what each has wrong."""
    async def wrong() -> dict[str, list[str]]:
        expected, found = api_tasks(sim), {}
        for name, read in views.items():
            got = read()
            problems = differences(expected, await got if inspect.isawaitable(got) else got)
            if problems:
                found[name] = problems[:10]
        return found

    async def all_equal() -> bool:
        return not await wrong()

    try:
        await eventually(all_equal, timeout_s=timeout_s, interval_s=0.5,
                         what="every view to equal the API")
    except AssertionError:
        raise AssertionError(f"after {timeout_s}s: {await wrong()}") from None


class TestLateConsumerAndMirror:
    @pytest.mark.timeout(150)
    async def test_equal_to_the_api_after_churn_a_kill_and_an_outage(
            self, sim: Simulator, broker: TansuBroker, daemon_for: Callable[..., Daemon],
            pg_url: str, tmp_path: Path) -> None:
        """While the simulator churns, the daemon is SIGKILLed and the broker hangs for a while;
        a consumer bootstrapped from the state topic after the kill and a mirror table started
        before it end, once the churn stopped, equal to the API's tasks task by task
        (hard-deleted ones absent from both), with no gap reported and none on the topic."""
        with daemon_for() as daemon:
            await eventually(lambda: first_run_done(daemon), timeout_s=30,
                             what="the replay first run")
            await sim.start_churn(CHURN_PER_S, MIX)
            async with mirror(broker.bootstrap, pg_url, tmp_path / "mirror.log") as table:
                await daemon.wait_cycles(3)
                sim.hard_delete(next(iter(sim.store.tasks)))  # its vanishing spans the kill
                await daemon.wait_cycles(2)
                daemon.kill()
                daemon.start()
                await daemon.wait_cycles(2, timeout_s=60)
                async with late_consumer(broker.bootstrap) as late:
                    broker.pause()
                    try:
                        await daemon.wait_failures(1, timeout_s=30)
                    finally:
                        broker.resume()
                    await daemon.wait_cycles(5, timeout_s=60)
                    # Two more hard deletes near the end: the sweep must confirm them too.
                    for task_id in list(sim.store.tasks)[:2]:
                        sim.hard_delete(task_id)
                    await sim.stop_churn()

                    views = {"consumer view": late.tasks, "mirror table": table}
                    await equal_to_api(sim, views, timeout_s=60)
                    await daemon.wait_cycles(3)  # quiet: nothing more changes either side
                    await equal_to_api(sim, views, timeout_s=1)
                    assert late.stream.gap_count == 0, list(late.stream.gaps)
                    assert not late.stream.unreadable, list(late.stream.unreadable)
                    gone = set(sim.store.removed)  # hard-deleted (the mix brings none back)
                    assert not gone & (late.tasks().keys() | (await table()).keys())
        kinds = [entry["kind"] for entry in sim.ledger]
        assert kinds.count("hard_delete") >= 3 and "revert" in kinds and "delete" in kinds
        records = await consume(broker.bootstrap, f"{PREFIX}.tasks", timeout_s=3)
        assert stream_problems(records) == []


class TestSnapshot:
    @pytest.mark.timeout(150)
    async def test_beside_the_daemon_and_twice_after_it(
            self, sim: Simulator, broker: TansuBroker, daemon_for: Callable[..., Daemon],
            pg_url: str, tmp_path: Path) -> None:
        """After a silent baseline the state topic lacks the unchanged tasks: `snapshot` run
        beside the churning daemon fills the mirror, which ends equal to the API; run twice
        after the daemon stopped it publishes identical records, each task at the version the
        daemon last published, and a ce_id never carries two different values."""
        with daemon_for(POLLER_START_MODE="baseline") as daemon:
            await eventually(lambda: first_run_done(daemon), timeout_s=30,
                             what="the baseline first run")
            await sim.start_churn(CHURN_PER_S, MIX)
            async with mirror(broker.bootstrap, pg_url, tmp_path / "mirror.log") as table:
                await daemon.wait_cycles(3)
                assert len(await table()) < len(sim.store.tasks)  # only the changed ones
                code, out = await run_cli(daemon.env, "snapshot")
                assert code == 0 and "state records published" in out, out
                await daemon.wait_cycles(3)
                await sim.stop_churn()
                await equal_to_api(sim, {"mirror table": table}, timeout_s=60)
            daemon_env = daemon.env
        live = len(sim.store.tasks)
        # Read, not asked for: Tansu's end offsets count a batch of records as one.
        before = await consume(broker.bootstrap, STATE_TOPIC, timeout_s=3)
        for _ in range(2):
            code, out = await run_cli(daemon_env, "snapshot")
            assert (code, out.strip()) == (0, f"snapshot: {live} state records published to "
                                              f"{STATE_TOPIC}")
        records = await consume(broker.bootstrap, STATE_TOPIC, timeout_s=30,
                                until=lambda rs: len(rs) >= len(before) + 2 * live)
        first, second = runs(records, already={(r.partition, r.offset) for r in before})
        assert len(first) == live
        assert [(r.key, r.value, r.headers) for r in first] == \
            [(r.key, r.value, r.headers) for r in second]
        assert state_problems(before, second) == []

    async def test_a_state_id_never_carries_two_values(
            self, sim: Simulator, broker: TansuBroker, daemon_for: Callable[..., Daemon]) -> None:
        """After a task's modify_time alone moved (stored again at the same version, nothing
        published), snapshot's state record for that version carries the task as stored now, so
        it has another ce_id than the daemon's: one id, one value, always."""
        task_id = next(t for t, task in sim.store.tasks.items() if task["status"] == 1)
        with daemon_for(POLLER_START_MODE="baseline") as daemon:
            await eventually(lambda: first_run_done(daemon), timeout_s=30,
                             what="the baseline first run")
            changed = sim.add_feedback(task_id)  # version 1 and its state record
            await daemon.wait_cycles(2)
            later = datetime.strptime(changed["modify_time"], TIME_FORMAT) + timedelta(minutes=1)
            sim.restore(task_id, stamp_at=later.strftime(TIME_FORMAT))  # modify_time alone
            await daemon.wait_cycles(2)
            daemon_env = daemon.env
        for _ in range(2):
            code, out = await run_cli(daemon_env, "snapshot", "--task", task_id)
            assert code == 0, out
        records = await consume(broker.bootstrap, STATE_TOPIC, timeout_s=10,
                                until=lambda rs: len(rs) >= 3)
        assert [consumer.envelope(r).sequence for r in records] == [1, 1, 1]
        values: dict[str, set[bytes]] = defaultdict(set)
        for record in records:
            values[consumer.envelope(record).ce_id].add(record.value)
        assert len(values) == 2 and all(len(v) == 1 for v in values.values())
        daemons, first, second = (json.loads(r.value) for r in records)
        assert first == second and first["modify_time"] > daemons["modify_time"]


def runs(records: Iterable[Any], already: set[tuple[int, int]]) -> tuple[list[Any], list[Any]]:
    """Two runs that published the same number of records to each partition, told apart: in
    each partition the first half of the records not `already` there, and the second half."""
    new: defaultdict[int, list[Any]] = defaultdict(list)
    for record in records:
        if (record.partition, record.offset) not in already:
            new[record.partition].append(record)
    halves = [(rs[:len(rs) // 2], rs[len(rs) // 2:]) for _, rs in sorted(new.items())]
    return [r for first, _ in halves for r in first], [r for _, second in halves for r in second]


def state_problems(before: Iterable[Any], snapshot: Iterable[Any]) -> list[str]:
    """Where a snapshot's state records disagree with the state topic before it: a ce_id with
    another value, or a task at another version than the newest published for it."""
    values: dict[str, bytes | None] = {}
    newest: dict[str, int] = {}
    for record in before:
        head = consumer.envelope(record)
        values.setdefault(head.ce_id, record.value)
        if head.sequence is not None:
            newest[head.key] = max(head.sequence, newest.get(head.key, 0))
    problems = []
    for record in snapshot:
        head = consumer.envelope(record)
        if values.get(head.ce_id, record.value) != record.value:
            problems.append(f"{head.ce_id}: another value than the daemon's")
        if head.key in newest and head.sequence != newest[head.key]:
            problems.append(f"{head.key} at version {head.sequence}, newest {newest[head.key]}")
    return problems


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`waiqin-poller ARGS` with `env`: its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def first_run_done(daemon: Daemon) -> bool:
    """The first run is complete (the progress gauge is 1 only then)."""
    return await daemon.metric("waiqin_poller_first_run_progress_ratio") == 1
