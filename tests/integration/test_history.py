"""The daemon reads what the vendor's modify_time hides: the sweep, vanished tasks, the breaker,
the resumable first run and the daily budget (daemon subprocess, simulator over HTTP, real
broker, both stores)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from poller import slices
from poller.models import beijing_now
from poller.simulator import Simulator
from tests.fixtures.broker import TansuBroker, consume
from tests.integration.harness import APPKEY, OPENID, Daemon, eventually, headers, types_of

# A sweep pass every ~15 s, read a page per cycle at most a few times a pass.
SWEEP = {"POLLER_SWEEP_PERIOD_HOURS": "0.004", "WAIQIN_RATE_LIMIT_PER_SECOND": "50"}


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Any]]:
    started: list[Simulator] = []

    async def make(**kwargs: Any) -> Simulator:
        sim = Simulator(OPENID, APPKEY, **{"tasks": 60, "days": 20, "seed": 11, **kwargs})
        await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
def daemon_for(running_kafka_broker: TansuBroker, tmp_path: Path, store_url: str,
               request: pytest.FixtureRequest) -> Callable[..., Daemon]:
    prefix = "ih" + re.sub(r"\W", "", request.node.name)[-20:].lower()

    def make(sim: Simulator, **extra: str) -> Daemon:
        return Daemon.configured(base_url=sim.base_url, bootstrap=running_kafka_broker.bootstrap,
                                 store_url=store_url, prefix=prefix, log_dir=tmp_path, **extra)
    return make


def old_task(sim: Simulator) -> str:
    """A live task last modified days ago: the window (today only) does not read it."""
    today = beijing_now().date().isoformat()
    return next(tid for tid, task in sim.store.tasks.items()
                if task["modify_time"][:10] < today and str(task["status"]) == "1")


def tasks_topic(daemon: Daemon) -> str:
    return f"{daemon.env['POLLER_TOPIC_PREFIX']}.tasks"


class TestSweep:
    async def test_a_silent_change_arrives_within_one_sweep_period(
            self, make_sim: Callable[..., Any], daemon_for: Callable[..., Daemon],
            running_kafka_broker: TansuBroker) -> None:
        """Feedback added without moving modify_time to a task last modified days ago arrives
        within one sweep period (about 15 s here)."""
        sim = await make_sim()
        with daemon_for(sim, **SWEEP) as daemon:
            await daemon.wait_cycles(2)
            task_id = old_task(sim)
            sim.store.add_feedback(task_id, touch=False)
            found = await consume(running_kafka_broker.bootstrap, tasks_topic(daemon), timeout_s=20,
                                  until=lambda rs: "FeedbackAdded" in types_of(rs, task_id))
            assert "FeedbackAdded" in types_of(found, task_id)
            assert await daemon.metric("waiqin_poller_sweep_changes_total",
                                       'cause="modify_time_unchanged"') >= 1

    async def test_a_hard_deleted_task_vanishes_exactly_once(
            self, make_sim: Callable[..., Any], daemon_for: Callable[..., Daemon],
            running_kafka_broker: TansuBroker) -> None:
        """A task removed from the API yields one TaskVanished after the confirming read, and
        no second one however many passes follow."""
        sim = await make_sim()
        with daemon_for(sim, **SWEEP) as daemon:
            await daemon.wait_cycles(2)
            task_id = old_task(sim)
            sim.store.hard_delete(task_id)
            await consume(running_kafka_broker.bootstrap, tasks_topic(daemon), timeout_s=40,
                          until=lambda rs: "TaskVanished" in types_of(rs, task_id))
            passes = await daemon.metric("waiqin_poller_sweep_passes_total")
            await eventually(lambda: _at_least(daemon, "waiqin_poller_sweep_passes_total", passes + 2),
                             timeout_s=60, what="two more sweep passes")
            records = await consume(running_kafka_broker.bootstrap, tasks_topic(daemon), timeout_s=2)
            assert types_of(records, task_id) == ["TaskVanished"]

    async def test_an_api_omitting_half_the_data_trips_the_breaker(
            self, make_sim: Callable[..., Any], daemon_for: Callable[..., Daemon],
            running_kafka_broker: TansuBroker) -> None:
        """While the API suddenly leaves half of each slice out, nothing vanishes: the breaker
        trips (a metric), and no event is emitted for the missing tasks."""
        sim = await make_sim()
        with daemon_for(sim, **SWEEP) as daemon:
            await daemon.wait_cycles(2)
            sim.inject("partial_pages", endpoint="queryTask", seconds=30, fraction=0.5)
            await eventually(lambda: _at_least(daemon, "waiqin_poller_vanish_breaker_trips_total", 2),
                             timeout_s=45, what="the breaker to trip twice")
            records = await consume(running_kafka_broker.bootstrap, tasks_topic(daemon), timeout_s=2)
            assert "TaskVanished" not in [headers(r)["ce_type"] for r in records]


class TestFirstRun:
    @pytest.mark.timeout(240)
    async def test_a_big_first_run_killed_three_times_resumes(
            self, make_sim: Callable[..., Any], daemon_for: Callable[..., Daemon],
            running_kafka_broker: TansuBroker) -> None:
        """50,000 tasks over three years, SIGKILLed three times part-way: each restart resumes at
        its last committed slice; the run ends with every task stored, no event, and fewer
        requests than three restarts from scratch would need (about one run's worth, computed
        from the simulator's history by the same walk)."""
        sim = await make_sim(tasks=50_000, days=3 * 366, drift=False)
        env = {"WAIQIN_RATE_LIMIT_PER_SECOND": "1000", "POLLER_SWEEP_PERIOD_HOURS": "0"}
        daemon = daemon_for(sim, **env).start()
        try:
            for share in (0.2, 0.45, 0.7):
                await eventually(lambda s=share: _at_least(daemon, "waiqin_poller_store_tasks",
                                                           50_000 * s), timeout_s=120,
                                 what=f"{share:.0%} of the first run")
                daemon.kill()
                daemon.start()
            await eventually(lambda: _done(daemon), timeout_s=120, what="the first run to finish")
            assert await daemon.metric("waiqin_poller_store_tasks") == 50_000
        finally:
            daemon.kill()
        interrupted = sim.requests["queryTask"]
        once = uninterrupted_requests(sim, rows=1000, max_pages=10)
        assert interrupted < 3 * once and interrupted <= 1.3 * once, (interrupted, once)
        events = await consume(running_kafka_broker.bootstrap, tasks_topic(daemon), timeout_s=1)
        assert events == [], "a baseline first run is silent"


class TestBudget:
    async def test_a_day_stays_within_the_budget_under_churn(
            self, make_sim: Callable[..., Any], daemon_for: Callable[..., Daemon]) -> None:
        """With WAIQIN_DAILY_REQUEST_BUDGET=40 and churn, the requests the API receives stay
        within 40: the interval is stretched (a metric), the daemon keeps running."""
        sim = await make_sim()
        await sim.start_churn(5.0)
        with daemon_for(sim, WAIQIN_DAILY_REQUEST_BUDGET="40", **SWEEP) as daemon:
            await eventually(lambda: _at_least(daemon, "waiqin_poller_interval_stretched_total", 1),
                             timeout_s=30, what="a stretched interval")
            await eventually(lambda: daemon.metric("waiqin_poller_api_requests_today"), timeout_s=10)
            await daemon.wait_cycles(0)
            assert sum(sim.requests.values()) <= 40
            assert daemon.process is not None and daemon.process.poll() is None


def uninterrupted_requests(sim: Simulator, *, rows: int, max_pages: int) -> int:
    """The queryTask requests of one uninterrupted first run of the simulator's history: the
    walk of poller/slices.py over its tasks per create date, a request per page (short last
    pages and abandoned over-full reads included)."""
    counts = Counter(date.fromisoformat(t["create_time"][:10]) for t in sim.store.tasks.values())
    walk, requests = slices.start(beijing_now().date()), 0
    while (read := slices.next_slice(walk)) is not None:
        tasks = sum(n for day, n in counts.items() if read.start <= day <= read.end)
        if slices.is_overflowing(read, tasks // rows, max_pages=max_pages):
            requests += max_pages + 1
            walk = slices.after_overflow(walk, read)
            continue
        requests += tasks // rows + 1
        walk = slices.after_read(walk, read, tasks, rows=rows, max_pages=max_pages)
    return requests


async def _at_least(daemon: Daemon, name: str, value: float) -> bool:
    return await daemon.metric(name) >= value


async def _done(daemon: Daemon) -> bool:
    """The first run is complete (the progress gauge is 1 only then)."""
    return await daemon.metric("waiqin_poller_first_run_progress_ratio") == 1
