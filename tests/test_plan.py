"""Tests for poller.plan's fast path: which renderings are recognised and which written back."""

from __future__ import annotations

from typing import Any

import orjson

from poller import normalise, plan, wire
from poller.models import StoredHashes

RECORD: dict[str, Any] = {"task_id": "t1", "status": "1", "task_content": "巡检",
                          "modify_time": "2024-05-20 10:00"}
RE_RENDERED: dict[str, Any] = {"status": 1, "modify_time": "2024-05-20 10:00", "task_content": "巡检",
                               "task_id": "t1"}
CONTENT = normalise.task(RECORD).hash


def rendering(record: dict[str, Any]) -> int:
    return normalise.received_hash(record)


def observe(record: dict[str, Any], received: int | None, *, sample: int = 0,
            content: str = CONTENT) -> plan.Observed:
    return plan.observe(plan.receive([record]), {"t1": StoredHashes(content, received)}, sample=sample)


class TestObserve:
    def test_a_known_rendering_is_unchanged_without_a_write(self) -> None:
        """The rendering last received, confirmed, costs nothing more: unchanged, no write."""
        observed = observe(RECORD, rendering(RECORD) & ~plan.UNCONFIRMED)
        assert (observed.unchanged, observed.tasks, observed.renderings) == (1, {}, [])

    def test_a_new_rendering_after_a_confirmed_one_is_written_back(self) -> None:
        """An API release re-renders a task once: the new rendering is stored, unconfirmed."""
        observed = observe(RE_RENDERED, rendering(RECORD) & ~plan.UNCONFIRMED)
        assert observed.unchanged == 1 and observed.tasks == {}
        assert observed.renderings == [("t1", rendering(RE_RENDERED) | plan.UNCONFIRMED)]

    def test_an_unconfirmed_rendering_seen_again_is_confirmed(self) -> None:
        """Received a second time, the stored rendering is the API's: confirmed once."""
        observed = observe(RE_RENDERED, rendering(RE_RENDERED) | plan.UNCONFIRMED)
        assert observed.unchanged == 1
        assert observed.renderings == [("t1", rendering(RE_RENDERED) & ~plan.UNCONFIRMED)]

    def test_per_response_drift_writes_back_on_one_page_in_resample(self) -> None:
        """After an unconfirmed rendering that did not come again, a new one is written back
        only on the pages the sample picks: one in RESAMPLE."""
        written = [sample for sample in range(4 * plan.RESAMPLE)
                   if observe(RE_RENDERED, rendering(RECORD) | plan.UNCONFIRMED, sample=sample).renderings]
        assert written == [0, plan.RESAMPLE, 2 * plan.RESAMPLE, 3 * plan.RESAMPLE]

    def test_a_content_change_stores_a_confirmed_rendering(self) -> None:
        """A changed task is observed in full; its rendering is stored confirmed."""
        observed = observe(RECORD, rendering(RE_RENDERED), content="another content hash")
        assert list(observed.tasks) == ["t1"] and observed.renderings == []
        assert observed.tasks["t1"].received == rendering(RECORD) & ~plan.UNCONFIRMED

    def test_records_in_bytes_observe_alike(self) -> None:
        """A page still in bytes is observed as the same page parsed: same task, same hashes."""
        page = wire.split("queryTask", orjson.dumps([RE_RENDERED]).decode())
        assert page is not None
        parsed = plan.observe(plan.receive([RE_RENDERED]), {})
        raw = plan.observe(plan.receive(page), {})
        assert raw.tasks["t1"].task == parsed.tasks["t1"].task
        assert raw.tasks["t1"].raw == RE_RENDERED and raw.tasks["t1"].received == parsed.tasks["t1"].received
