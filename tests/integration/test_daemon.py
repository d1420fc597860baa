"""The real daemon (subprocess) against the simulator over HTTP and the real broker."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from poller.simulator import Simulator
from tests.fixtures.broker import TansuBroker, consume
from tests.integration.harness import APPKEY, OPENID, Daemon, events_on, eventually, headers, types_of

STATUS_EVENTS = {1: "TaskFeedbackSubmitted", 2: "TaskAccepted", 3: "TaskRejected", 0: "TaskReopened"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(OPENID, APPKEY, tasks=60, days=5, seed=7)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_daemon(sim: Simulator, running_kafka_broker: TansuBroker, tmp_path: Path,
                request: pytest.FixtureRequest) -> Callable[..., Daemon]:
    prefix = "it" + re.sub(r"\W", "", request.node.name)[-20:].lower()

    def make(store_url: str, broker: TansuBroker = running_kafka_broker, **extra: str) -> Daemon:
        return Daemon.configured(base_url=sim.base_url, bootstrap=broker.bootstrap,
                                 store_url=store_url, prefix=prefix, log_dir=tmp_path, **extra)
    return make


def topic(daemon: Daemon, kind: str) -> str:
    prefix = daemon.env["POLLER_TOPIC_PREFIX"]
    return {"tasks": f"{prefix}.tasks", "types": f"{prefix}.task-types",
            "dead": f"{prefix}.poller.dead-letter"}[kind]


def pick(sim: Simulator, count: int, **where: Any) -> list[str]:
    """Ids of seeded tasks matching `where` (compared as strings: renderings drift)."""
    ids = [tid for tid, t in sim.store.tasks.items()
           if all(str(t.get(k)) == str(v) for k, v in where.items())]
    assert len(ids) >= count, f"seed has only {len(ids)} tasks with {where}"
    return ids[:count]


class TestEveryEventType:
    async def test_each_mutation_yields_its_event_with_headers(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], store_url: str,
            running_kafka_broker: TansuBroker) -> None:
        """After a silent baseline, every kind of change arrives as its event, CloudEvents-shaped."""
        with make_daemon(store_url) as daemon:
            await daemon.wait_cycles(2)
            baseline = await consume(running_kafka_broker.bootstrap, topic(daemon, "tasks"), timeout_s=1)
            assert baseline == [], "the baseline must be silent"

            fresh = pick(sim, 9, status=1, task_status=0)
            reopened = pick(sim, 1, status=1, task_status=2)[0]
            deleted = pick(sim, 1, status=0)[0]
            store = sim.store
            created = store.create_task()["task_id"]
            changes = [
                (created, None, "TaskCreated"),
                (fresh[0], store.add_feedback, "FeedbackAdded"),
                (fresh[1], lambda t: store.set_task_status(t, 2), "TaskAccepted"),
                (fresh[2], lambda t: store.set_task_status(t, 3), "TaskRejected"),
                (fresh[3], lambda t: store.set_task_status(t, 1), "TaskFeedbackSubmitted"),
                (fresh[4], store.reassign, "TaskReassigned"),
                (fresh[5], store.set_deadline, "TaskDeadlineChanged"),
                (fresh[6], lambda t: store.update_fields(t, task_content="改为：拜访后拍摄陈列照片"),
                 "TaskUpdated"),
                (fresh[7], store.delete, "TaskDeleted"),
                (reopened, lambda t: store.set_task_status(t, 0), "TaskReopened"),
                (deleted, store.restore, "TaskRestored"),
            ]
            for task_id, mutate, _ in changes:
                if mutate is not None:
                    mutate(task_id)
            expected = {task_id: kind for task_id, _, kind in changes}

            def complete(records: list[Any]) -> bool:
                return all(kind in types_of(records, tid) for tid, kind in expected.items())

            records = await events_on(running_kafka_broker.bootstrap, topic(daemon, "tasks"),
                                      until=complete, timeout_s=30)
        for record in records:
            h = headers(record)
            assert h["ce_specversion"] == "1.0" and h["content-type"] == "application/json"
            assert record.key.decode() == h["ce_subject"] == h["ce_partitionkey"]
            assert h["ce_source"] and h["ce_id"] and int(h["ce_sequence"]) >= 1
            assert h["ce_time"].endswith("+08:00")
            payload = json.loads(record.value)
            assert payload["task_id"] == h["ce_subject"]
            assert payload["task"]["task_id"] == h["ce_subject"]
            assert payload["modify_time"].endswith("+08:00")
        created_types = types_of(records, created)
        assert created_types[0] == "TaskCreated"
        # Nothing else changed: exactly the expected events, no noise from drifting renderings.
        noisy = {h["ce_subject"] for h in map(headers, records)} - set(expected)
        assert not noisy, f"events for tasks nobody changed: {noisy}"


class TestNoNoise:
    async def test_unchanged_tasks_rendered_differently_emit_nothing(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], tmp_path: Path,
            running_kafka_broker: TansuBroker) -> None:
        """Cycles over drifting renderings of unchanged tasks publish no task events."""
        with make_daemon(f"sqlite:///{tmp_path / 's.db'}") as daemon:
            await daemon.wait_cycles(8)
            records = await consume(running_kafka_broker.bootstrap, topic(daemon, "tasks"), timeout_s=1)
        assert records == []


class TestCrashRecovery:
    async def test_kill9_mid_cycle_loses_nothing(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], tmp_path: Path,
            running_kafka_broker: TansuBroker) -> None:
        """Changes before and during a kill -9 outage all arrive; duplicates share their ce_id."""
        store = f"sqlite:///{tmp_path / 'k.db'}"
        ids = pick(sim, 8, status=1, task_status=0)
        daemon = make_daemon(store).start()
        try:
            await daemon.wait_cycles(2)
            for tid in ids[:4]:
                sim.store.add_feedback(tid)
            sim.faults.add("latency", count=3, ms=300)  # stretch the cycle so the kill lands mid-way
            await eventually(lambda: daemon.metric("waiqin_poller_api_requests_total",
                                                   'endpoint="queryTask",outcome="ok"'), what="a request")
            daemon.kill()
            for tid in ids[4:]:
                sim.store.add_feedback(tid)
        finally:
            daemon.kill()
        with make_daemon(store) as again:
            records = await events_on(
                running_kafka_broker.bootstrap, topic(again, "tasks"),
                until=lambda rs: all("FeedbackAdded" in types_of(rs, t) for t in ids), timeout_s=30)
        by_id: dict[str, set[bytes]] = defaultdict(set)
        for record in records:
            by_id[headers(record)["ce_id"]].add(record.value)
        assert all(len(values) == 1 for values in by_id.values()), "a duplicate must be identical"


class TestBrokerOutage:
    async def test_changes_during_outage_arrive_after_restart(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], tmp_path: Path,
            broker_factory: Callable[[], TansuBroker]) -> None:
        """A broker outage turns readiness false; changes made meanwhile arrive once it is back."""
        broker = broker_factory()
        # One partition: Tansu forgets topics on restart and re-creates them on first produce
        # with its own partition count, acknowledging (and dropping) records sent to partitions
        # it does not have. Real Kafka keeps topics; this keeps the test about the poller.
        with make_daemon(f"sqlite:///{tmp_path / 'o.db'}", broker=broker,
                         POLLER_TOPIC_PARTITIONS="1") as daemon:
            await daemon.wait_cycles(2)
            broker.stop()
            await eventually(lambda: _not_ready(daemon), timeout_s=40, what="readiness false")
            ids = pick(sim, 3, status=1, task_status=0)
            for tid in ids:
                sim.store.add_feedback(tid)
            await daemon.wait_failures(2)
            broker.start()
            await events_on(broker.bootstrap, topic(daemon, "tasks"),
                            until=lambda rs: all("FeedbackAdded" in types_of(rs, t) for t in ids),
                            timeout_s=60)
            await eventually(lambda: _ready(daemon), timeout_s=30, what="ready again")


async def _ready(daemon: Daemon) -> bool:
    return (await daemon.get("/readyz"))[0] == 200


async def _not_ready(daemon: Daemon) -> bool:
    return (await daemon.get("/readyz"))[0] == 503


class TestBadInput:
    async def test_faults_and_malformed_records_do_not_stop_good_ones(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], tmp_path: Path,
            running_kafka_broker: TansuBroker) -> None:
        """API faults are retried; a malformed record is dead-lettered once; good records flow."""
        with make_daemon(f"sqlite:///{tmp_path / 'b.db'}") as daemon:
            await daemon.wait_cycles(2)
            good = pick(sim, 1, status=1, task_status=0)[0]
            sim.faults.add("http_500", count=2, endpoint="queryTask")
            sim.faults.add("garbage", count=1, endpoint="queryTask")
            sim.faults.add("malformed_record", count=6, variant="receivers_not_list")
            sim.store.add_feedback(good)
            records = await events_on(running_kafka_broker.bootstrap, topic(daemon, "tasks"),
                                      until=lambda rs: "FeedbackAdded" in types_of(rs, good))
            await daemon.wait_cycles(3)
            dead = await consume(running_kafka_broker.bootstrap, topic(daemon, "dead"), timeout_s=2)
        assert types_of(records, good)
        assert len(dead) == 1, "the same bad record is dead-lettered once, not once per cycle"
        body = json.loads(dead[0].value)
        assert headers(dead[0])["ce_type"] == "DeadLetter"
        assert body["reason"] and body["raw"] is not None and body["page"] >= 1
        assert set(body["window"]) == {"modify_date_from", "modify_date_to"}


class TestHttpAndLifecycle:
    async def test_endpoints_and_graceful_sigterm(
            self, make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
        """/healthz, /readyz and /metrics answer; SIGTERM stops cleanly with exit code 0."""
        daemon = make_daemon(f"sqlite:///{tmp_path / 'h.db'}").start()
        try:
            await daemon.wait_cycles(1)
            assert (await daemon.get("/healthz"))[0] == 200
            await eventually(lambda: _ready(daemon), what="ready")
            _, text = await daemon.get("/metrics")
            for name in ("waiqin_poller_cycles_total", "waiqin_poller_cycle_duration_seconds",
                         "waiqin_poller_api_requests_total", "waiqin_poller_tasks_fetched_total",
                         "waiqin_poller_lag_seconds", "waiqin_poller_store_tasks",
                         "waiqin_poller_last_success_timestamp_seconds"):
                assert name in text
            assert await daemon.metric("waiqin_poller_store_tasks") == 60
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
        assert '"stopped"' in daemon.log()

    def test_bad_config_exits_2_naming_the_variable(self, tmp_path: Path) -> None:
        """A missing appkey stops the start with one line naming WAIQIN_APPKEY, exit code 2."""
        daemon = Daemon({"PATH": "", "WAIQIN_OPENID": "x"}, tmp_path).start()
        assert daemon.process is not None
        assert daemon.process.wait(timeout=30) == 2
        lines = daemon.log().strip().splitlines()
        assert len(lines) == 1 and "WAIQIN_APPKEY" in lines[0] and "Traceback" not in lines[0]


class TestHighAvailability:
    async def test_one_leader_and_takeover_after_kill(
            self, sim: Simulator, make_daemon: Callable[..., Daemon], pg_url: str,
            running_kafka_broker: TansuBroker) -> None:
        """Two daemons on one PostgreSQL: exactly one polls; kill it and the other takes over."""
        first = make_daemon(pg_url).start()
        second = make_daemon(pg_url).start()
        try:
            await eventually(lambda: _leaders(first, second, 1), what="one leader")
            await first.wait_cycles(1) if await first.metric("waiqin_poller_leader") else await second.wait_cycles(1)
            leader, standby = (first, second) if await first.metric("waiqin_poller_leader") else (second, first)
            assert await standby.successful_cycles() == 0
            leader.kill()
            await eventually(lambda: standby.metric("waiqin_poller_leader"), timeout_s=20, what="takeover")
            tid = pick(sim, 1, status=1, task_status=0)[0]
            sim.store.add_feedback(tid)
            await events_on(running_kafka_broker.bootstrap, topic(standby, "tasks"),
                            until=lambda rs: "FeedbackAdded" in types_of(rs, tid))
        finally:
            for daemon in (first, second):
                daemon.__exit__()


async def _leaders(a: Daemon, b: Daemon, count: int) -> bool:
    return (await a.metric("waiqin_poller_leader")) + (await b.metric("waiqin_poller_leader")) == count
