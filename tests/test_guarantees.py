"""The delivery guarantees as a property: whatever fails and whenever, consumers end with the truth.

Random lives of two tasks (changes, and changes back to an earlier state) are interleaved with
cycles that fail at random points: a store operation refused (reads, the commit, the outbox),
a publish that fails after Kafka stored part of the batch, a lost leadership, a crash that
replaces the poller. A consumer that de-duplicates by ce_id and applies events by ce_sequence
must end with every task exactly as the API last showed it, never see one id with two payloads
or one sequence with two states, and see every sequence number of a task.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from poller.config import Settings
from poller.errors import PollerError, StoreUnavailable
from poller.fetch import Page
from poller.http import HealthState
from poller.loop import Poller
from poller.models import BEIJING, Window
from poller.publish import MemoryPublisher
from poller.store.memory import MemoryStore
from tests.consumer_model import ConsumerModel

TASK_IDS = ("t1", "t2")
PEOPLE = ({"id": "u1", "name": "甲"}, {"id": "u2", "name": "乙"})
FEEDBACK = {"feedback_content": "已到店", "feedback_visit_id": "v1", "feedback_time": "2026-03-01 08:30"}
# The few states a task moves between, so that changes back and forth (A→B→A→B within one
# minute) are frequent: a receiver added, feedback given, deleted, content edited.
STATES: tuple[dict[str, Any], ...] = (
    {},
    {"receivers": list(PEOPLE)},
    {"task_status": 1, "feedback_detail": [FEEDBACK]},
    {"status": 0},
    {"task_content": "巡店检查", "receivers": [PEOPLE[1]]},
)
STORE_FAULTS = ("read_hashes", "read_snapshots", "seen_dead_letters", "commit", "pending",
                "mark_sent", "load_state", "read_types")
FAULTS = ("none", "publish", "lease", "crash", *STORE_FAULTS)
START = datetime(2026, 3, 1, 9, 0, tzinfo=BEIJING)


class FakeApi:
    """A tiny Waiqin365: a few tasks, paged two per page, every task in every scan."""

    def __init__(self) -> None:
        self.tasks = {task_id: _task(task_id, 0, "2026-03-01 08:00") for task_id in TASK_IDS}
        self.minute = 0
        self.requests: Counter[str] = Counter()

    def change(self, task_id: str, state: int) -> None:
        """Put a task into one of STATES, stamped with the current minute."""
        self.tasks[task_id] = _task(task_id, state, self._stamp())

    def tick(self) -> None:
        """A minute passes (changes within one minute share their modify_time)."""
        self.minute += 1

    def _stamp(self) -> str:
        return (START + timedelta(minutes=self.minute)).strftime("%Y-%m-%d %H:%M")

    async def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                         max_pages: int | None = None) -> AsyncIterator[Page]:
        """Every task, two per page (create-date filters are ignored: one slice holds them all)."""
        records = [_render(task, n) for n, task in enumerate(self.tasks.values())]
        pages = [records[start:start + 2] for start in range(0, len(records) + 1, 2)]
        last = len(pages) if max_pages is None else min(len(pages), start_page + max_pages - 1)
        for number in range(start_page, last + 1):
            yield Page(window, number, pages[number - 1], is_last=number == len(pages))

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        return []


def _task(task_id: str, state: int, modify_time: str) -> dict[str, Any]:
    base = {"task_id": task_id, "task_type_id": "", "task_content": "拜访门店",
            "receivers": [PEOPLE[0]], "feedback_detail": [], "task_status": 0, "status": 1,
            "create_time": "2026-03-01 08:00", "modify_time": modify_time}
    return {**base, **copy.deepcopy(STATES[state])}


def _render(task: dict[str, Any], salt: int) -> dict[str, Any]:
    """The API's drift: numbers as strings now and then (the same content, another rendering)."""
    return {key: str(value) if key in ("task_status", "status") and salt % 2 else value
            for key, value in task.items()}


class Run:
    """One poller (replaced on a crash) over one store and one broker, cycling with faults."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.store = MemoryStore()
        self.publisher = MemoryPublisher()
        self.settings = Settings.load({"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k",
                                       "POLLER_START_MODE": "replay"}).poll
        self.poller = self._new_poller()

    def _new_poller(self) -> Poller:
        return Poller(self.settings, client=self.api, store=self.store, publisher=self.publisher,
                      health=HealthState(stuck_after_s=60, ready_window_s=60), source="property")

    async def cycle(self, fault: str, delivered: int) -> bool:
        """One cycle with `fault` injected; True when it succeeded."""
        lease = self.store.leadership()
        assert await lease.acquire(asyncio.Event())
        if fault in STORE_FAULTS:
            self.store.fail(fault, error=StoreUnavailable(f"injected: {fault}"))
        elif fault in ("publish", "crash"):
            self.publisher.fail_next(1, delivered=delivered)
        elif fault == "lease":
            self.store.revoke_leadership()
        try:
            await self.poller.run_cycle(lease)
            return True
        except PollerError:
            if fault == "crash":
                self.poller = self._new_poller()  # the process died; the store and broker did not
            return False
        finally:
            await lease.release()


steps = st.lists(st.one_of(
    st.tuples(st.just("change"), st.sampled_from(TASK_IDS), st.integers(0, len(STATES) - 1)),
    st.tuples(st.just("cycle"), st.sampled_from(FAULTS), st.integers(0, 3)),
    st.just(("tick",)),
), min_size=1, max_size=40)


class TestDeliveryGuarantees:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps)
    # The audit's cases, always run: A→B→A→B within one minute; a change whose publish, or
    # whose commit, fails and which is undone before the next cycle.
    @example([("change", "t1", 1), ("cycle", "none", 0), ("change", "t1", 0), ("cycle", "none", 0),
              ("change", "t1", 1), ("cycle", "none", 0)])
    @example([("change", "t1", 1), ("cycle", "publish", 0), ("change", "t1", 0)])
    @example([("change", "t1", 1), ("cycle", "commit", 0), ("change", "t1", 0)])
    def test_consumers_end_with_the_truth(self, program: list[tuple[Any, ...]]) -> None:
        """Changes, reverts and failures at random points: a consumer applying events by
        ce_sequence and de-duplicating by ce_id ends with every task as last observed."""
        api = FakeApi()
        run = Run(api)

        async def play() -> None:
            await run.store.start()
            await run.publisher.start()
            await run.cycle("none", 0)  # the first run (replay: every task is told)
            for step in program:
                if step[0] == "change":
                    api.change(*step[1:])
                elif step[0] == "tick":
                    api.tick()
                else:
                    await run.cycle(*step[1:])
            quiet = 0
            for _ in range(20):  # until faults left pending are used up and two cycles pass
                quiet = quiet + 1 if await run.cycle("none", 0) else 0
                if quiet == 2:
                    break
            assert quiet == 2, "the poller never recovered"

        asyncio.run(play())
        consumer = ConsumerModel().apply_all(run.publisher.of("tasks"))
        assert consumer.contradictions == []
        assert consumer.differences(api.tasks) == []
        for task_id in TASK_IDS:
            told = {seq for (subject, seq) in consumer.sequences if subject == task_id}
            assert told == set(range(1, max(told) + 1)), f"{task_id}: sequences {sorted(told)}"
