"""The shared SnapshotStore suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from poller.errors import LeadershipLost, StoreConflict, StoreError, StoreUnavailable
from poller.models import BEIJING, DeadLetterMark, PollState, StoredHashes
from poller.store.base import Leadership, SnapshotStore
from tests.store.conftest import led, make_store, record, snap, type_snap, write


def bad(task_id: str) -> Any:
    """A snapshot the database must refuse (NULL hash), to break a commit midway."""
    return dataclasses.replace(snap(task_id), hash=None)


class TestSnapshots:
    async def test_round_trip(self, store: SnapshotStore, lease: Leadership) -> None:
        """A committed snapshot comes back field for field, bytes and time zone included."""
        document = '{"task_content":"巡店\\u0000","x":1}'.encode() + b"\x00\xff"
        first = dataclasses.replace(snap("t1", 3, document=document), received=-(2**63))
        second = dataclasses.replace(snap("t2"), modify_time=None, received=2**63 - 1)
        await write(store, lease, [first, second])
        found = await store.read_snapshots(["t1", "t2"])
        assert found == {"t1": first, "t2": second}
        assert found["t1"].modify_time is not None
        assert found["t1"].modify_time.utcoffset() == BEIJING.utcoffset(None)

    async def test_times_are_returned_in_beijing(self, store: SnapshotStore, lease: Leadership) -> None:
        """A modify_time given in UTC is the same instant when read back, in +08:00."""
        utc_time = datetime(2024, 5, 1, 1, 30, tzinfo=UTC)
        await write(store, lease, [snap("t1", modify_time=utc_time)])
        stored = (await store.read_snapshots(["t1"]))["t1"].modify_time
        assert stored == utc_time
        assert stored is not None and stored.hour == 9

    async def test_absent_ids_are_missing(self, store: SnapshotStore, lease: Leadership) -> None:
        """Unknown ids are simply absent from the answer; no ids is an empty answer."""
        await write(store, lease, [snap("t1")])
        assert set(await store.read_snapshots(["t1", "nope", "t1"])) == {"t1"}
        assert await store.read_snapshots([]) == {}

    async def test_upsert_replaces(self, store: SnapshotStore, lease: Leadership) -> None:
        """Committing a task again replaces hash, document, version, modify_time and rendering."""
        await write(store, lease, [snap("t1", 0)])
        newer = dataclasses.replace(snap("t1", 1, document=b'{"new":true}',
                                         modify_time=datetime(2024, 6, 2, 8, 0, tzinfo=BEIJING)),
                                    received=7)
        await write(store, lease, [newer])
        assert await store.read_snapshots(["t1"]) == {"t1": newer}

    async def test_repeat_within_page_last_wins(self, store: SnapshotStore, lease: Leadership) -> None:
        """A task repeated within one page (pagination drift) is stored once, as last seen."""
        await write(store, lease, [snap("t1", 1), snap("t2"), snap("t1", 2)])
        assert (await store.read_snapshots(["t1"]))["t1"].version == 2
        assert await store.count_tasks() == 2

    async def test_many_ids_in_one_call(self, store: SnapshotStore, lease: Leadership) -> None:
        """5,000 stored ids and 100 absent ones are answered by a single call."""
        page = [snap(f"task-{n:05}", n) for n in range(5000)]
        await write(store, lease, page)
        wanted = [s.task_id for s in page] + [f"absent-{n}" for n in range(100)]
        found = await store.read_snapshots(wanted)
        assert len(found) == 5000
        assert found["task-04999"] == page[-1]

    async def test_hashes_are_the_fast_path(self, store: SnapshotStore, lease: Leadership) -> None:
        """read_hashes answers content and rendering hashes, for many ids, after every upsert."""
        page = [dataclasses.replace(snap(f"task-{n:05}", n), received=n) for n in range(2500)]
        await write(store, lease, page)
        await write(store, lease, [dataclasses.replace(page[7], hash="h-new", received=None)])
        found = await store.read_hashes([s.task_id for s in page] + ["absent", "task-00001"])
        assert len(found) == 2500 and "absent" not in found
        assert found["task-00007"] == StoredHashes("h-new", None)
        assert found["task-02499"] == StoredHashes(page[-1].hash, 2499)
        assert await store.read_hashes([]) == {}

    async def test_renderings_update_only_the_rendering_hash(
            self, store: SnapshotStore, lease: Leadership) -> None:
        """A re-rendered task keeps its snapshot; only its rendering hash changes."""
        await write(store, lease, [snap("t1", 4), snap("t2", 1)])
        await write(store, lease, renderings=[("t1", 42)])
        assert await store.read_snapshots(["t1", "t2"]) == {
            "t1": dataclasses.replace(snap("t1", 4), received=42), "t2": snap("t2", 1)}

    async def test_empty_commit(self, store: SnapshotStore, lease: Leadership) -> None:
        """An empty commit writes nothing, returns no outbox id and does not fail."""
        assert await write(store, lease) is None
        assert await store.count_tasks() == 0


class TestAtomicity:
    async def test_failed_commit_writes_nothing(self, store: SnapshotStore, lease: Leadership) -> None:
        """A commit with one row the database refuses leaves no snapshot, mark, type, state or
        outbox record of that commit."""
        await write(store, lease, [snap("t1", 0)])
        page = [snap("t1", 5), snap("t2"), bad("t3"), snap("t4")]
        with pytest.raises(StoreConflict):
            await write(store, lease, page, [DeadLetterMark("fp-1", "t9")], types=[type_snap("a")],
                        records=[record(1)], state=PollState(baseline_complete=True))
        assert await store.read_snapshots(["t1", "t2", "t3", "t4"]) == {"t1": snap("t1", 0)}
        assert await store.seen_dead_letters(["fp-1"]) == set()
        assert await store.read_types() == {}
        assert await store.pending(10) == []
        assert await store.load_state() == PollState()
        assert await store.count_tasks() == 1

    async def test_store_usable_after_failed_commit(self, store: SnapshotStore, lease: Leadership) -> None:
        """After a refused commit, the next one commits normally."""
        with pytest.raises(StoreError):
            await write(store, lease, [bad("t1")])
        await write(store, lease, [snap("t1")])
        assert set(await store.read_snapshots(["t1"])) == {"t1"}


class TestOutbox:
    async def test_records_keep_their_order_and_bytes(self, store: SnapshotStore, lease: Leadership) -> None:
        """Outbox records come back oldest first, exactly as committed, tombstones included."""
        first = await write(store, lease, [snap("t1")], records=[record(1), record(2)])
        second = await write(store, lease, records=[record(3, "dead-letter"), record(4, value=None)])
        assert first is not None and second is not None and second > first
        pending = await store.pending(10)
        assert [entry.record for entry in pending] == [
            record(1), record(2), record(3, "dead-letter"), record(4, value=None)]
        assert [entry.id for entry in pending] == sorted(entry.id for entry in pending)
        assert pending[1].id == first and pending[-1].id == second
        assert await store.outbox_depth() == 4

    async def test_mark_sent_drops_through_the_id(self, store: SnapshotStore, lease: Leadership) -> None:
        """mark_sent drops every record up to the id; later ones stay, in order; pending pages."""
        through = await write(store, lease, records=[record(n) for n in range(3)])
        await write(store, lease, records=[record(n) for n in range(3, 6)])
        assert through is not None
        await store.mark_sent(through)
        assert [entry.record for entry in await store.pending(2)] == [record(3), record(4)]
        assert await store.outbox_depth() == 3

    async def test_a_commit_of_only_records(self, store: SnapshotStore, lease: Leadership) -> None:
        """A commit of records alone (a dead letter) writes them and nothing else."""
        assert await write(store, lease, records=[record(1)]) is not None
        assert await store.count_tasks() == 0 and await store.outbox_depth() == 1


class TestFencing:
    async def test_no_write_without_leadership(self, store: SnapshotStore) -> None:
        """A commit under a leadership never acquired raises LeadershipLost and writes nothing."""
        with pytest.raises(LeadershipLost):
            await write(store, store.leadership(), [snap("t1")], records=[record(1)])
        assert await store.count_tasks() == 0 and await store.outbox_depth() == 0

    async def test_no_write_after_release(self, store: SnapshotStore) -> None:
        """A released leadership fences every later commit."""
        lease = await led(store)
        await write(store, lease, [snap("t1")])
        await lease.release()
        with pytest.raises(LeadershipLost):
            await write(store, lease, [snap("t2")], state=PollState(baseline_complete=True))
        assert set(await store.read_snapshots(["t1", "t2"])) == {"t1"}
        assert await store.load_state() == PollState()

    async def test_a_leadership_of_another_store_is_refused(
            self, store: SnapshotStore, tmp_path: Path) -> None:
        """Holding some other store's lock proves nothing about this one."""
        async with make_store(f"sqlite:///{tmp_path / 'other.db'}") as other:  # type: ignore[attr-defined]
            lease = await led(other)
            try:
                with pytest.raises(LeadershipLost):
                    await write(store, lease, [snap("t1")])
            finally:
                await lease.release()


class TestDeadLetters:
    async def test_marks_round_trip(self, store: SnapshotStore, lease: Leadership) -> None:
        """Committed fingerprints are reported as seen; others are not."""
        await write(store, lease, marks=[DeadLetterMark("fp-1", "t1"), DeadLetterMark("fp-2", None)])
        assert await store.seen_dead_letters(["fp-1", "fp-2", "fp-3"]) == {"fp-1", "fp-2"}
        assert await store.seen_dead_letters([]) == set()

    async def test_marking_twice_is_harmless(self, store: SnapshotStore, lease: Leadership) -> None:
        """The same fingerprint marked again (also twice in one commit) is accepted silently."""
        mark = DeadLetterMark("fp-1", "t1")
        await write(store, lease, [snap("t1")], [mark, mark])
        await write(store, lease, marks=[mark])
        assert await store.seen_dead_letters(["fp-1"]) == {"fp-1"}


class TestTypes:
    async def test_round_trip_and_upsert(self, store: SnapshotStore, lease: Leadership) -> None:
        """Types are stored with their version, replaced on a second commit, read by id or all."""
        await write(store, lease, types=[type_snap("a"), type_snap("b")])
        await write(store, lease, types=[type_snap("a", "回访", version=3)])
        assert await store.read_types(["a", "zz"]) == {"a": type_snap("a", "回访", version=3)}
        assert await store.read_types() == {"a": type_snap("a", "回访", version=3), "b": type_snap("b")}
        assert await store.read_types([]) == {}

    async def test_empty_store_has_no_types(self, store: SnapshotStore) -> None:
        """A new store has no types."""
        assert await store.read_types() == {}


class TestState:
    async def test_new_store_has_default_state(self, store: SnapshotStore) -> None:
        """A new store answers PollState()."""
        assert await store.load_state() == PollState()

    async def test_state_round_trip_and_replace(self, store: SnapshotStore, lease: Leadership) -> None:
        """The saved state is read back exactly, and a later save replaces it."""
        first = PollState(
            window_from=date(2024, 5, 1),
            last_success_started_at=datetime(2024, 5, 1, 23, 59, 30, 123456, tzinfo=BEIJING),
            start_mode="baseline", baseline_complete=True,
        )
        await write(store, lease, state=first)
        assert await store.load_state() == first
        second = first.model_copy(update={"window_from": date(2024, 5, 2)})
        await write(store, lease, state=second)
        assert await store.load_state() == second


class TestCount:
    async def test_count_follows_inserts_not_updates(self, store: SnapshotStore, lease: Leadership) -> None:
        """count_tasks grows with new tasks only, not with updates of known ones."""
        assert await store.count_tasks() == 0
        await write(store, lease, [snap(f"t{n}") for n in range(10)])
        await write(store, lease, [snap(f"t{n}", 1) for n in range(5, 15)])
        assert await store.count_tasks() == 15


class TestPersistence:
    async def test_data_survives_restart(self, store_url: str) -> None:
        """Everything committed is there after stop and a new store on the same URL."""
        first = make_store(store_url)
        await first.start()
        lease = await led(first)
        await write(first, lease, [snap("t1", 2)], [DeadLetterMark("fp", "t1")],
                    types=[type_snap("a")], records=[record(1)],
                    state=PollState(window_from=date(2024, 1, 2)))
        await lease.release()
        await first.stop()
        second = make_store(store_url)
        async with second:  # type: ignore[attr-defined]
            assert await second.read_snapshots(["t1"]) == {"t1": snap("t1", 2)}
            assert await second.seen_dead_letters(["fp"]) == {"fp"}
            assert await second.read_types() == {"a": type_snap("a")}
            assert [entry.record for entry in await second.pending(5)] == [record(1)]
            assert (await second.load_state()).window_from == date(2024, 1, 2)
            assert await second.count_tasks() == 1


class TestLifecycle:
    async def test_stop_is_idempotent(self, store_url: str) -> None:
        """stop() before start, twice after start, and start() twice are all harmless."""
        opened = make_store(store_url)
        await opened.stop()
        await opened.start()
        await opened.start()
        await opened.ping()
        await opened.stop()
        await opened.stop()

    async def test_calls_before_start_are_unavailable(self, store_url: str) -> None:
        """Using a store that is not started raises StoreUnavailable, not a driver error."""
        with pytest.raises(StoreUnavailable, match="not started"):
            await make_store(store_url).ping()


class TestUnreachable:
    async def test_postgres_down_is_unavailable(self) -> None:
        """A PostgreSQL server that refuses connections makes start() raise StoreUnavailable."""
        opened = make_store("postgresql://postgres:s3cret@127.0.0.1:1/nothing")
        with pytest.raises(StoreUnavailable) as caught:
            await opened.start()
        assert "s3cret" not in str(caught.value)
        await opened.stop()

    async def test_sqlite_unopenable_is_unavailable(self, tmp_path: Path) -> None:
        """An SQLite path that cannot be opened (a directory) is StoreUnavailable at start()."""
        (tmp_path / "dir.db").mkdir()
        opened = make_store(f"sqlite:///{tmp_path / 'dir.db'}")
        with pytest.raises(StoreUnavailable):
            await opened.start()
        await opened.stop()


class TestHistory:
    async def test_create_dates_and_tombstones_round_trip(self, store: SnapshotStore,
                                                         lease: Leadership) -> None:
        """A snapshot's create date and vanished flag come back; read_hashes reports vanished."""
        gone = dataclasses.replace(snap("t1", 2), create_date=date(2024, 5, 1), vanished=True)
        await write(store, lease, [gone, dataclasses.replace(snap("t2"), create_date=date(2024, 5, 2))])
        assert (await store.read_snapshots(["t1"]))["t1"] == gone
        assert (await store.read_hashes(["t1"]))["t1"].vanished

    async def test_live_tasks_by_create_date(self, store: SnapshotStore, lease: Leadership) -> None:
        """Counts and ids of live tasks per create date; vanished ones and tasks not modified
        since the start date are left out."""
        early = datetime(2024, 1, 1, 9, 0, tzinfo=BEIJING)
        rows = [dataclasses.replace(snap(f"t{n}"), create_date=date(2024, 5, 1 + n % 3),
                                    modify_time=early if n == 4 else snap("x").modify_time)
                for n in range(6)]
        rows.append(dataclasses.replace(snap("gone"), create_date=date(2024, 5, 1), vanished=True))
        await write(store, lease, rows)
        assert await store.created_counts() == {date(2024, 5, 1): 2, date(2024, 5, 2): 2,
                                                date(2024, 5, 3): 2}
        assert await store.created_counts(date(2024, 3, 1)) == {
            date(2024, 5, 1): 2, date(2024, 5, 2): 1, date(2024, 5, 3): 2}
        assert await store.created_ids(date(2024, 5, 1), date(2024, 5, 2)) == {"t0", "t1", "t3", "t4"}
        assert await store.created_ids(date(2024, 5, 2), date(2024, 5, 2), date(2024, 3, 1)) == {"t1"}

    async def test_snapshot_pages(self, store: SnapshotStore, lease: Leadership) -> None:
        """Live snapshots page by task_id, filtered by create date or by ids."""
        rows = [dataclasses.replace(snap(f"t{n}"), create_date=date(2024, 5, 1 + n % 2)) for n in range(5)]
        await write(store, lease, [*rows, dataclasses.replace(snap("t9"), vanished=True)])
        first = await store.snapshot_page(None, 2)
        assert [s.task_id for s in first] == ["t0", "t1"]
        assert [s.task_id for s in await store.snapshot_page("t1", 10)] == ["t2", "t3", "t4"]
        created = await store.snapshot_page(None, 10, created=(date(2024, 5, 2), date(2024, 5, 2)))
        assert [s.task_id for s in created] == ["t1", "t3"]
        assert [s.task_id for s in await store.snapshot_page(None, 10, task_ids=["t4", "t9", "x"])] == ["t4"]

    async def test_backfill_requests(self, store: SnapshotStore, lease: Leadership) -> None:
        """A request is recorded without leadership, its progress committed under it."""
        asked = datetime(2026, 3, 1, 9, 30, tzinfo=BEIJING)
        request = await store.request_backfill(date(2026, 1, 1), date(2026, 1, 31), asked)
        assert request.state == "pending" and request.requested_at == asked
        assert await store.backfills() == [request]
        done = dataclasses.replace(request, state="done", next_day=date(2026, 2, 1), pages=40,
                                   tasks=300, events=7, finished_at=asked)
        await write(store, lease, backfill=done)
        assert await store.backfills() == []
        assert await store.backfills(active_only=False) == [done]

    async def test_api_usage_per_day(self, store: SnapshotStore, lease: Leadership) -> None:
        """Request totals per Beijing day and endpoint survive, and never go down."""
        day = date(2026, 3, 1)
        await write(store, lease, usage=[(day, "queryTask", 40), (day, "queryTaskType", 2)])
        await write(store, lease, usage=[(day, "queryTask", 55), (day, "queryTaskType", 1)])
        assert await store.read_usage(day) == {"queryTask": 55, "queryTaskType": 2}
        assert await store.read_usage(date(2026, 3, 2)) == {}
