"""Tests for poller.commands.status: what it reads from real stores, and how it says it."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from poller import history
from poller.commands import budget, status
from poller.config import Settings
from poller.errors import StoreNotFound
from poller.models import (
    Backfill,
    Commit,
    Confirmation,
    FirstRun,
    PollState,
    Sweep,
    Walk,
)
from poller.store.base import Leadership, SnapshotStore
from poller.store.locks import Holder
from tests.store.conftest import led, make_store, record, snap

NOW = datetime.fromisoformat("2026-03-10T15:00:00+08:00")
TODAY = NOW.date()


def settings_for(store_url: str, **extra: str) -> Settings:
    return Settings.load({"WAIQIN_OPENID": "-", "WAIQIN_APPKEY": "-", "POLLER_STORE_URL": store_url,
                          **extra})


@pytest.fixture
async def store(store_url: str) -> Any:
    opened = make_store(store_url)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.stop()


async def save(store: SnapshotStore, lease: Leadership, state: PollState, **parts: Any) -> None:
    await store.commit(Commit(state=state, **parts), lease)


def created(task_id: str, day: date) -> Any:
    return replace(snap(task_id), create_date=day)


class TestGather:
    async def test_a_new_store(self, store: SnapshotStore, store_url: str) -> None:
        """A store no daemon ran on: no leader, nothing started, the window not open, and the
        projection of an empty history (the window's cycles and one sweep request a pass)."""
        report = await status.gather(store, settings_for(store_url), NOW)
        assert report.leader == status.LeaderStatus(held=False)
        assert report.first_run == status.FirstRunStatus(complete=False, progress=0.0)
        assert (report.window_from, report.window_to, report.last_success) == (None, None, None)
        assert (report.tasks, report.outbox_depth, report.backfills) == (0, 0, [])
        assert report.requests == status.RequestsStatus(
            today=0, by_endpoint={}, budget=None, projected_per_day=1441.0, window_per_day=1440.0,
            sweep_per_day=1.0, sweep_pages_per_pass=1)
        assert report.sweep.staleness_seconds is None

    async def test_first_run_in_progress(self, store: SnapshotStore, store_url: str) -> None:
        """Mid first run: the leader (this process), the first run's progress, today's
        requests by endpoint, the outbox and each backfill request's days."""
        lease = await led(store)
        try:
            run = FirstRun(mode="baseline", started_at=NOW - timedelta(hours=1),
                           walk=Walk(end=TODAY - timedelta(days=99)), tasks=500)
            await save(store, lease, PollState(first_run=run),
                       snapshots=[created(f"t{n}", TODAY - timedelta(days=n % 2 * 10)) for n in range(5)],
                       usage=[(TODAY, "queryTask", 120), (TODAY, "queryTaskType", 3),
                              (TODAY - timedelta(days=1), "queryTask", 999)],
                       records=[record(1), record(2)])
            first = await store.request_backfill(TODAY - timedelta(days=5), TODAY, NOW)
            await store.request_backfill(TODAY - timedelta(days=1), TODAY, NOW)
            await store.commit(Commit(backfill=replace(
                first, state="running", next_day=first.modify_from + timedelta(days=2), pages=5,
                tasks=50)), lease)
            report = await status.gather(store, settings_for(store_url), NOW)
            expected_pid = os.getpid() if store_url.startswith("sqlite") else lease_pid(lease)
        finally:
            await lease.release()
        assert report.leader.held and report.leader.pid == expected_pid
        assert report.first_run == status.FirstRunStatus(
            complete=False, mode="baseline", started_at=run.started_at,
            progress=round(history.progress(run.walk.end, run.started_at), 4),
            read_back_to=TODAY - timedelta(days=98), tasks=500)
        assert 0 < report.first_run.progress < 1 and report.window_from is None
        assert report.requests.today == 123
        assert report.requests.by_endpoint == {"queryTask": 120, "queryTaskType": 3}
        assert (report.tasks, report.outbox_depth) == (5, 2)
        assert [(b.id, b.state, b.days_done, b.days, b.pages, b.tasks) for b in report.backfills] == [
            (1, "running", 2, 6, 5, 50), (2, "pending", 0, 2, 0, 0)]

    async def test_steady_state_and_the_staleness_bound(self, store: SnapshotStore,
                                                        store_url: str) -> None:
        """In steady state: the window to today, the sweep's progress, the tasks awaiting a
        confirming read, and the staleness bound counted from the previous pass's start."""
        sweep = Sweep(end=TODAY - timedelta(days=30), pass_started_at=NOW - timedelta(hours=2),
                      previous_pass_started_at=NOW - timedelta(hours=20), passes=3,
                      confirmation=Confirmation(start=TODAY, end=TODAY, task_ids=("a", "b")))
        lease = await led(store)
        try:
            await save(store, lease, PollState(
                window_from=TODAY - timedelta(days=1), baseline_complete=True, start_mode="replay",
                last_success_started_at=NOW - timedelta(seconds=30), sweep=sweep),
                snapshots=[created(f"t{n}", TODAY - timedelta(days=n * 20)) for n in range(4)])
        finally:
            await lease.release()
        settings = settings_for(store_url, WAIQIN_DAILY_REQUEST_BUDGET="5000",
                                POLLER_SWEEP_PERIOD_HOURS="12")
        report = await status.gather(store, settings, NOW)
        assert report.leader.held is False
        assert (report.window_from, report.window_to) == (TODAY - timedelta(days=1), TODAY)
        assert report.first_run == status.FirstRunStatus(complete=True, mode="replay", progress=1.0)
        assert report.sweep == status.SweepStatus(
            enabled=True, period_hours=12.0, passes=3, pass_started_at=sweep.pass_started_at,
            progress=0.5,  # two of the four stored tasks were created after the cursor
            read_back_to=TODAY - timedelta(days=29), confirming=2,
            verified_since=NOW - timedelta(hours=20), staleness_seconds=72_000.0)
        assert report.requests.budget == 5000 and report.requests.sweep_per_day == 2.0

    async def test_json_is_what_scripts_read(self, store: SnapshotStore, store_url: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one JSON document with every documented key."""
        await status.run(settings_for(store_url), as_json=True)
        report = orjson.loads(capsys.readouterr().out)
        assert list(report) == list(status.Status.model_fields)
        assert report["leader"] == {"held": False, "pid": None, "where": None, "since": None}
        assert datetime.fromisoformat(report["now"]).utcoffset() == timedelta(hours=8)


def lease_pid(lease: Leadership) -> int | None:
    pid: int | None = getattr(lease, "server_pid", None)  # the PostgreSQL lock session's backend
    return pid


class TestExisting:
    async def test_no_sqlite_file_is_not_created(self, tmp_path: Path) -> None:
        """Pointed at an SQLite file that does not exist, status fails and creates nothing."""
        url = f"sqlite:///{tmp_path / 'typo.db'}"
        with pytest.raises(StoreNotFound, match="no poller has run with this POLLER_STORE_URL"):
            await status.run(settings_for(url), as_json=False)
        assert not await asyncio.to_thread(lambda: list(tmp_path.iterdir()))


def steady(**overrides: Any) -> status.Status:
    """A status as a running daemon's store gives it, at NOW."""
    state = PollState(window_from=TODAY, baseline_complete=True, start_mode="baseline",
                      last_success_started_at=NOW - timedelta(seconds=12),
                      sweep=Sweep(end=date(2025, 1, 1), pass_started_at=NOW - timedelta(hours=3),
                                  previous_pass_started_at=NOW - timedelta(hours=20, minutes=5),
                                  passes=7))
    values: dict[str, Any] = {
        "now": NOW, "store": "sqlite:///poller.db", "leader": Holder(pid=4242, where="lock file poller.db.lock"),
        "tasks": 123_456, "outbox_depth": 0, "backfills": [], "requests": {"queryTask": 1200, "queryTaskType": 34},
        "projection": budget.Projection(window_per_day=1440, sweep_per_day=94.5,
                                        sweep_pages_per_pass=94, budget=10_000),
        "created_counts": {date(2025, 6, 1): 300, date(2024, 6, 1): 100},
        "sweep_period_h": 24.0, **overrides}
    return status.summarise(state, **values)


class TestWords:
    def test_rows_read_as_sentences(self) -> None:
        """Each item reads in words: leader, ages, progress, the staleness bound, the budget."""
        rows = dict(status.rows(steady()))
        assert rows["leader"] == "pid 4242 (lock file poller.db.lock)"
        assert rows["last success"] == "12 s ago"
        assert rows["window"] == "2026-03-10 → 2026-03-10"
        assert rows["first run"] == "complete (baseline)"
        assert rows["sweep"].startswith("75% of a pass started 3 h ago, created since 2025-01-02 read")
        assert rows["staleness bound"] == "20 h 5 min: every stored task was read since 2026-03-09 18:55"
        assert rows["stored tasks"] == "123,456" and rows["outbox"] == "empty"
        assert rows["requests today"] == ("1,234 (queryTask 1,200, queryTaskType 34) of "
                                          "WAIQIN_DAILY_REQUEST_BUDGET 10,000")
        assert rows["projected"] == "about 1,534 requests a day (window 1,440, sweep 94: 94 pages a pass)"

    def test_no_leader_and_a_failed_backfill(self) -> None:
        """No lock holder reads as such; every backfill gets a line, with its error."""
        failed = Backfill(3, date(2026, 2, 1), date(2026, 2, 28), NOW, state="failed",
                          next_day=date(2026, 2, 11), pages=10, error="the API refused")
        rows = status.rows(steady(leader=None, backfills=[failed]))
        assert ("leader", "none: no daemon holds the store") in rows
        assert ("backfills", "#3 2026-02-01 → 2026-02-28: failed, 10/28 days, 10 pages, 0 tasks, "
                             "0 events (the API refused)") in rows

    def test_recent_finished_backfills_only(self) -> None:
        """Active requests all show; of the finished ones only the five most recent."""
        done = [Backfill(n, TODAY, TODAY, NOW, state="done") for n in range(1, 9)]
        running = Backfill(9, TODAY, TODAY, NOW, state="running")
        report = steady(backfills=[*done, running])  # the store's order: oldest first
        assert [b.id for b in report.backfills] == [4, 5, 6, 7, 8, 9]

    @pytest.mark.parametrize(("seconds", "words"), [
        (0.4, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
        (3660, "1 h 1 min"), (86_400, "1 d"), (97_200, "1 d 3 h")])
    def test_durations(self, seconds: float, words: str) -> None:
        """Durations read as people say them."""
        assert status.duration(seconds) == words


class TestDocumented:
    def test_every_json_key_is_in_the_operations_guide(self) -> None:
        """docs/operations.md ("Reading status") lists every key --json prints, nested ones too."""
        guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
        section = guide.split("## Reading status", 1)[1].split("\n## ", 1)[0]

        def keys(model: Any) -> set[str]:
            found = set(model.model_fields)
            for field in model.model_fields.values():
                inner = getattr(field.annotation, "__args__", (field.annotation,))
                for kind in inner:
                    if isinstance(kind, type) and issubclass(kind, BaseModel):
                        found |= keys(kind)
            return found

        assert {k for k in keys(status.Status) if f"`{k}`" not in section} == set()
