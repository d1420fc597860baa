"""The consumer-facing docs: the event catalogue matches the code, the consumer example works."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import asyncpg
import jsonschema
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from poller import events
from poller.consumer import Delivery, Gap, TaskStream, Verdict, decode
from poller.localbroker import TansuBroker
from poller.models import OutboundRecord
from poller.publish import KafkaPublisher
from tests.fixtures.broker import kafka_settings, topic_settings
from tests.fixtures.postgres import pg_execute
from tests.integration.harness import eventually
from tests.test_consumer import Poller, state_of, task, tombstone
from tests.test_diff import ZHANG

PARTITIONS = 3  # topic_settings() default
# Tansu answers JoinGroup after half the session timeout: a short one keeps the test fast.
FAST_JOIN = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
ROOT = Path(__file__).resolve().parent.parent


def _load(relative: str, name: str) -> ModuleType:
    """Import a script that lives outside the package (docs/, examples/) by its path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


catalogue = _load("docs/gen_event_catalogue.py", "gen_event_catalogue")
guide = _load("docs/gen_consumer_guide.py", "gen_consumer_guide")
consumer = _load("examples/consumer.py", "example_consumer")
mirror = _load("examples/mirror_postgres.py", "example_mirror_postgres")


def _records() -> dict[str, OutboundRecord]:
    return {example.name: example.record for example in catalogue.examples()}


class TestCatalogue:
    def test_up_to_date(self) -> None:
        """docs/events.md is exactly what the generator produces from today's code."""
        committed = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
        assert committed == catalogue.render(), "run: python docs/gen_event_catalogue.py"

    def test_every_event_type_has_a_decodable_example(self) -> None:
        """Each event type of docs/design.md §4 has one example that decodes to its own model."""
        records = _records()
        names = [cls.__name__ for cls in events.TASK_EVENTS] + ["TaskTypeChanged", "DeadLetter"]
        assert list(records) == names
        for name, record in records.items():
            assert dict(record.headers)["ce_type"] == name.encode()
            assert type(events.decode(record)).__name__ == name

    def test_examples_match_published_schemas(self) -> None:
        """Each example value is valid against its JSON Schema in poller/schemas/."""
        for name, record in _records().items():
            schema = json.loads((ROOT / "poller" / "schemas" / f"{name}.json").read_text())
            jsonschema.Draft202012Validator(schema).validate(json.loads(record.value))


class TestConsumerGuide:
    def test_up_to_date(self) -> None:
        """docs/consumers.md is exactly what the generator produces from today's code."""
        committed = (ROOT / "docs" / "consumers.md").read_text(encoding="utf-8")
        assert committed == guide.render(), "run: python docs/gen_consumer_guide.py"

    def test_story_is_the_planner_output(self) -> None:
        """Each step's flush is its events, then one state record at the same ce_sequence (a
        tombstone for the vanishing), and the versions grow by one."""
        for version, (_, flush) in enumerate(guide.story(), start=1):
            *task_events, state = flush
            assert task_events and all(r.topic == "tasks" for r in task_events)
            assert state.topic == "state" and dict(state.headers)["ce_type"] == b"TaskState"
            assert {dict(r.headers)["ce_sequence"] for r in flush} == {str(version).encode()}
        assert state.value is None

    def test_library_table_names_what_exists(self) -> None:
        """Every name the guide's library table lists is in poller.consumer."""
        from poller import consumer as library

        for name, _ in guide.LIBRARY:
            assert hasattr(library, name.split("(")[0]), name

    def test_verdict_table_covers_every_verdict(self) -> None:
        """The worked example shows every verdict the library gives."""
        judged = {verdict for _, _, verdict in guide.verdicts(guide.story())}
        assert judged == {verdict.value for verdict in Verdict}


class TestDescribe:
    def test_lines_per_event_type(self) -> None:
        """The example turns each delivered event into its line, gaps marked."""
        records = _records()
        stream = TaskStream()
        lines = [consumer.describe(d) for d in stream.deliveries(
            [records["TaskCreated"], records["TaskAccepted"], records["TaskAccepted"]])]
        assert len(lines) == 2 and lines[1].startswith("accepted: task ")
        gap = Delivery(decode(records["TaskReopened"]), Verdict.GAP, Gap("1", 2, 5))
        assert consumer.describe(gap).endswith("  [gap: versions 3..4 never arrived]")


class TestConsumerAgainstBroker:
    async def test_group_consumer_dedupes_and_commits(
        self, running_kafka_broker: TansuBroker
    ) -> None:
        """Published events, one of them twice, are each handled once and all offsets committed."""
        records = _records()
        names = ["TaskCreated", "FeedbackAdded", "TaskFeedbackSubmitted", "TaskAccepted"]
        sent = [records[n] for n in names] + [records["TaskAccepted"]]  # a re-delivery
        topics = topic_settings(partitions=PARTITIONS)
        bootstrap = running_kafka_broker.bootstrap
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            await publisher.publish(sent)

        group = f"{topics.prefix}-group"
        lines: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run_group(bootstrap, topics.prefix, group,
                                                      emit=lines.append, stop=stop,
                                                      options=FAST_JOIN))
        try:
            await _until_committed(bootstrap, group, topics.tasks, len(sent), task)
        finally:
            stop.set()
            stream = await task
        assert len(lines) == len(names)
        assert lines[0].startswith("TaskCreated: task ")
        assert lines[1].startswith("feedback on ")
        assert lines[2].startswith("TaskFeedbackSubmitted: task ")
        assert lines[3].startswith("accepted: task ")
        assert stream.counts[Verdict.DUPLICATE] == 1

    async def test_from_state_as_a_user_runs_it(self, running_kafka_broker: TansuBroker) -> None:
        """`examples/consumer.py --from-state` prints the current state's size, then each
        newer event, and exits 0 on Ctrl-C."""
        topics = topic_settings()
        poller = Poller()
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            for task_id in ("T1", "T2"):
                await publisher.publish(poller.observe(task(task_id)))
            process = await _example(running_kafka_broker.bootstrap, topics.prefix, "--from-state")
            try:
                assert await _line(process) == "current state: 2 tasks (2 state records read)"
                await publisher.publish(poller.observe(task("T2", receivers=[ZHANG])))
                assert await _line(process) == "reassigned: task T2 to 张三"
            finally:
                process.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(process.wait(), 20) == 0

    async def test_missing_topics_are_one_line(self, running_kafka_broker: TansuBroker) -> None:
        """Pointed at a prefix without topics, the example says so in one line and exits 1."""
        process = await _example(running_kafka_broker.bootstrap, "nowhere", "--from-state")
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 1
        assert out.decode().splitlines() == [
            "error: topic nowhere.tasks does not exist: check the prefix (POLLER_TOPIC_PREFIX) "
            "and, for the state topic, that POLLER_STATE_TOPIC is not false"]


async def _example(bootstrap: str, prefix: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "consumer.py"), "--bootstrap", bootstrap,
        "--prefix", prefix, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 30)).decode().rstrip("\n")


async def _until_committed(bootstrap: str, group: str, topic: str, total: int,
                           task: asyncio.Task[None]) -> None:
    """Wait (bounded) until the group's committed offsets cover `total` records."""
    # A consumer that never subscribes does not join the group: it only reads its offsets.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        async with asyncio.timeout(20):
            while True:
                if task.done():
                    task.result()  # the consumer crashed: raise its error
                committed = [await reader.committed(tp) for tp in partitions]
                if sum(offset or 0 for offset in committed) >= total:
                    return
                await asyncio.sleep(0.1)  # committed offsets have no event to await
    finally:
        await reader.stop()


class TestMirrorPostgres:
    async def test_table_equals_the_state_topic_across_restarts(
            self, running_kafka_broker: TansuBroker, pg_url: str) -> None:
        """The mirror run as a user runs it keeps one row per live task at its newest version:
        newer states replace rows, an older state re-sent is ignored, a tombstone deletes, and
        a restart resumes after the last applied batch (offsets kept with the rows)."""
        topics = topic_settings()
        poller = Poller()
        async with KafkaPublisher(kafka_settings(running_kafka_broker), topics) as publisher:
            first_t2 = state_of(poller.observe(task("T2")))
            flushes = [poller.observe(task("T1")), poller.observe(task("T3")),
                       poller.observe(task("T1", task_content="新内容")),
                       poller.observe(task("T2", receivers=[ZHANG]))]
            for flush in flushes:
                await publisher.publish(flush)
            await publisher.publish([first_t2, tombstone(state_of(flushes[1]), 2)])
            process = await _mirror(running_kafka_broker.bootstrap, pg_url, topics.prefix)
            try:
                rows = await eventually(lambda: _rows_if_caught_up(pg_url, topics.state, 6),
                                        what="the mirror to apply 6 state records")
            finally:
                process.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(process.wait(), 20) == 0
            assert {task_id: seq for task_id, (seq, _) in rows.items()} == {"T1": 2, "T2": 2}
            assert rows["T1"][1]["task_content"] == "新内容"
            assert rows["T2"][1]["receivers"] == [{"id": ZHANG["id"], "name": "张三"}]
            assert rows["T1"][1] == json.loads(state_of(flushes[2]).value)

            # While it is stopped: one more change, and a row removed behind its back, which a
            # mirror that re-read the topic from the start would bring back.
            await pg_execute(pg_url, "DELETE FROM waiqin_tasks WHERE task_id = 'T2'")
            await publisher.publish(poller.observe(task("T1", task_content="第三版")))
            process = await _mirror(running_kafka_broker.bootstrap, pg_url, topics.prefix)
            try:
                rows = await eventually(lambda: _rows_if_caught_up(pg_url, topics.state, 7),
                                        what="the restarted mirror to apply 1 more record")
            finally:
                process.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(process.wait(), 20) == 0
            assert {task_id: seq for task_id, (seq, _) in rows.items()} == {"T1": 3}

    async def test_older_version_in_a_later_batch_is_ignored(self, pg_url: str) -> None:
        """Batch by batch, a row only moves forward: an older state is ignored, a tombstone older
        than the row deletes nothing, a newer tombstone deletes."""
        poller = Poller()
        first = state_of(poller.observe(task("T1")))
        second = state_of(poller.observe(task("T1", task_content="新内容")))
        conn = await asyncpg.connect(pg_url)
        try:
            table = mirror.Mirror(conn, "tasks_mirror")
            await table.create()
            assert await table.apply(_consumed([second])) == 1
            assert await table.apply(_consumed([first], offset=1)) == 0
            assert await table.apply(_consumed([tombstone(first, 1)], offset=2)) == 0
            assert await conn.fetchval("SELECT task->>'task_content' FROM tasks_mirror") == "新内容"
            assert await table.apply(_consumed([tombstone(first, 3)], offset=3)) == 1
            assert await conn.fetchval("SELECT count(*) FROM tasks_mirror") == 0
            assert await table.offsets("state") == {0: 4}
        finally:
            await conn.close()

    async def test_missing_topic_is_one_line(self, running_kafka_broker: TansuBroker,
                                             pg_url: str) -> None:
        """Pointed at a prefix without a state topic, the mirror says so in one line, exit 1."""
        process = await _mirror(running_kafka_broker.bootstrap, pg_url, "nowhere")
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 1
        assert out.decode().splitlines() == [
            "error: topic nowhere.tasks.state does not exist: check --prefix "
            "(POLLER_TOPIC_PREFIX) and that the poller runs with POLLER_STATE_TOPIC=true"]


def _consumed(records: list[OutboundRecord], offset: int = 0) -> list[ConsumerRecord[bytes, bytes]]:
    """The records as a consumer reads them from partition 0 of topic "state"."""
    return [ConsumerRecord("state", 0, offset + n, 0, 0, r.key, r.value, None, 0, 0, r.headers)
            for n, r in enumerate(records)]


async def _mirror(bootstrap: str, dsn: str, prefix: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "mirror_postgres.py"), "--bootstrap", bootstrap,
        "--dsn", dsn, "--prefix", prefix, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _rows_if_caught_up(dsn: str, topic: str, records: int
                             ) -> dict[str, tuple[int, dict[str, object]]] | None:
    """The mirror's rows once its stored offsets cover `records` state records, else None."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('waiqin_tasks_offsets')") is None:
            return None
        covered = await conn.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM waiqin_tasks_offsets WHERE topic = $1",
            topic)
        if covered < records:
            return None
        rows = await conn.fetch("SELECT task_id, sequence, task FROM waiqin_tasks")
        return {row["task_id"]: (row["sequence"], json.loads(row["task"])) for row in rows}
    finally:
        await conn.close()
