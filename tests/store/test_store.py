"""The shared SnapshotStore suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from poller.errors import StoreConflict, StoreError, StoreUnavailable
from poller.models import BEIJING, DeadLetterMark, PollState
from poller.store.base import SnapshotStore
from tests.store.conftest import make_store, snap, type_snap


def bad(task_id: str) -> Any:
    """A snapshot the database must refuse (NULL hash), to break a commit midway."""
    return dataclasses.replace(snap(task_id), hash=None)


class TestSnapshots:
    async def test_round_trip(self, store: SnapshotStore) -> None:
        """A committed snapshot comes back field for field, bytes and time zone included."""
        document = '{"task_content":"巡店\\u0000","x":1}'.encode() + b"\x00\xff"
        first = snap("t1", 3, document=document)
        second = dataclasses.replace(snap("t2"), modify_time=None)
        await store.commit_page([first, second])
        found = await store.get_snapshots(["t1", "t2"])
        assert found == {"t1": first, "t2": second}
        assert found["t1"].modify_time is not None
        assert found["t1"].modify_time.utcoffset() == BEIJING.utcoffset(None)

    async def test_times_are_returned_in_beijing(self, store: SnapshotStore) -> None:
        """A modify_time given in UTC is the same instant when read back, in +08:00."""
        utc_time = datetime(2024, 5, 1, 1, 30, tzinfo=UTC)
        await store.commit_page([snap("t1", modify_time=utc_time)])
        stored = (await store.get_snapshots(["t1"]))["t1"].modify_time
        assert stored == utc_time
        assert stored is not None and stored.hour == 9

    async def test_absent_ids_are_missing(self, store: SnapshotStore) -> None:
        """Unknown ids are simply absent from the answer; no ids is an empty answer."""
        await store.commit_page([snap("t1")])
        assert set(await store.get_snapshots(["t1", "nope", "t1"])) == {"t1"}
        assert await store.get_snapshots([]) == {}

    async def test_upsert_replaces(self, store: SnapshotStore) -> None:
        """Committing a task again replaces hash, document, version and modify_time."""
        await store.commit_page([snap("t1", 0)])
        newer = snap("t1", 1, document=b'{"new":true}',
                     modify_time=datetime(2024, 6, 2, 8, 0, tzinfo=BEIJING))
        await store.commit_page([newer])
        assert await store.get_snapshots(["t1"]) == {"t1": newer}

    async def test_repeat_within_page_last_wins(self, store: SnapshotStore) -> None:
        """A task repeated within one page (pagination drift) is stored once, as last seen."""
        await store.commit_page([snap("t1", 1), snap("t2"), snap("t1", 2)])
        assert (await store.get_snapshots(["t1"]))["t1"].version == 2
        assert await store.count_tasks() == 2

    async def test_many_ids_in_one_call(self, store: SnapshotStore) -> None:
        """5,000 stored ids and 100 absent ones are answered by a single call."""
        page = [snap(f"task-{n:05}", n) for n in range(5000)]
        await store.commit_page(page)
        wanted = [s.task_id for s in page] + [f"absent-{n}" for n in range(100)]
        found = await store.get_snapshots(wanted)
        assert len(found) == 5000
        assert found["task-04999"] == page[-1]

    async def test_hashes_are_the_fast_path(self, store: SnapshotStore) -> None:
        """get_hashes answers stored hashes only, for many ids at once, after every upsert."""
        page = [snap(f"task-{n:05}", n) for n in range(2500)]
        await store.commit_page(page)
        await store.commit_page([dataclasses.replace(page[7], hash="h-new")])
        found = await store.get_hashes([s.task_id for s in page] + ["absent", "task-00001"])
        assert len(found) == 2500 and "absent" not in found
        assert found["task-00007"] == "h-new" and found["task-02499"] == page[-1].hash
        assert await store.get_hashes([]) == {}

    async def test_empty_commit(self, store: SnapshotStore) -> None:
        """An empty page commits nothing and does not fail."""
        await store.commit_page([])
        assert await store.count_tasks() == 0


class TestAtomicity:
    async def test_failed_commit_writes_nothing(self, store: SnapshotStore) -> None:
        """A page with one row the database refuses leaves no snapshot or mark of that page."""
        await store.commit_page([snap("t1", 0)])
        page = [snap("t1", 5), snap("t2"), bad("t3"), snap("t4")]
        with pytest.raises(StoreConflict):
            await store.commit_page(page, [DeadLetterMark("fp-1", "t9")])
        assert await store.get_snapshots(["t1", "t2", "t3", "t4"]) == {"t1": snap("t1", 0)}
        assert await store.seen_dead_letters(["fp-1"]) == set()
        assert await store.count_tasks() == 1

    async def test_store_usable_after_failed_commit(self, store: SnapshotStore) -> None:
        """After a refused page, the next page commits normally."""
        with pytest.raises(StoreError):
            await store.commit_page([bad("t1")])
        await store.commit_page([snap("t1")])
        assert set(await store.get_snapshots(["t1"])) == {"t1"}


class TestDeadLetters:
    async def test_marks_round_trip(self, store: SnapshotStore) -> None:
        """Committed fingerprints are reported as seen; others are not."""
        marks = [DeadLetterMark("fp-1", "t1"), DeadLetterMark("fp-2", None)]
        await store.commit_page([], marks)
        assert await store.seen_dead_letters(["fp-1", "fp-2", "fp-3"]) == {"fp-1", "fp-2"}
        assert await store.seen_dead_letters([]) == set()

    async def test_marking_twice_is_harmless(self, store: SnapshotStore) -> None:
        """The same fingerprint marked again (also twice in one page) is accepted silently."""
        mark = DeadLetterMark("fp-1", "t1")
        await store.commit_page([snap("t1")], [mark, mark])
        await store.commit_page([], [mark])
        assert await store.seen_dead_letters(["fp-1"]) == {"fp-1"}


class TestTypes:
    async def test_round_trip_and_upsert(self, store: SnapshotStore) -> None:
        """Types are stored, replaced on a second commit, and read by id or all at once."""
        await store.commit_types([type_snap("a"), type_snap("b")])
        await store.commit_types([type_snap("a", "回访")])
        assert await store.get_types(["a", "zz"]) == {"a": type_snap("a", "回访")}
        assert await store.get_types() == {"a": type_snap("a", "回访"), "b": type_snap("b")}
        assert await store.get_types([]) == {}

    async def test_empty_store_has_no_types(self, store: SnapshotStore) -> None:
        """A new store has no types and an empty commit is fine."""
        await store.commit_types([])
        assert await store.get_types() == {}


class TestState:
    async def test_new_store_has_default_state(self, store: SnapshotStore) -> None:
        """A new store answers PollState()."""
        assert await store.load_state() == PollState()

    async def test_state_round_trip_and_replace(self, store: SnapshotStore) -> None:
        """The saved state is read back exactly, and a later save replaces it."""
        first = PollState(
            window_from=date(2024, 5, 1),
            last_success_started_at=datetime(2024, 5, 1, 23, 59, 30, 123456, tzinfo=BEIJING),
            start_mode="baseline", baseline_complete=True,
        )
        await store.save_state(first)
        assert await store.load_state() == first
        second = first.model_copy(update={"window_from": date(2024, 5, 2)})
        await store.save_state(second)
        assert await store.load_state() == second


class TestCount:
    async def test_count_follows_inserts_not_updates(self, store: SnapshotStore) -> None:
        """count_tasks grows with new tasks only, not with updates of known ones."""
        assert await store.count_tasks() == 0
        await store.commit_page([snap(f"t{n}") for n in range(10)])
        await store.commit_page([snap(f"t{n}", 1) for n in range(5, 15)])
        assert await store.count_tasks() == 15


class TestPersistence:
    async def test_data_survives_restart(self, store_url: str) -> None:
        """Everything committed is there after stop and a new store on the same URL."""
        first = make_store(store_url)
        await first.start()
        await first.commit_page([snap("t1", 2)], [DeadLetterMark("fp", "t1")])
        await first.commit_types([type_snap("a")])
        await first.save_state(PollState(window_from=date(2024, 1, 2)))
        await first.stop()
        second = make_store(store_url)
        async with second:  # type: ignore[attr-defined]
            assert await second.get_snapshots(["t1"]) == {"t1": snap("t1", 2)}
            assert await second.seen_dead_letters(["fp"]) == {"fp"}
            assert await second.get_types() == {"a": type_snap("a")}
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
