"""Tests for the simulator: seed data, request checks, mutations, admin API, faults, churn."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from poller.config import WaiqinSettings
from poller.errors import SourceAuthError, SourceResponseError, SourceUnavailable
from poller.fetch import (
    CODE_API_NOT_GRANTED,
    CODE_BAD_DIGEST,
    CODE_BAD_OPENID,
    CODE_BAD_PARAMS,
    CODE_STALE_TIMESTAMP,
    QUERY_TASK,
    WaiqinClient,
)
from poller.models import BEIJING, Window, beijing_now
from poller.signing import digest
from poller.simulator import Simulator, run_simulator
from poller.simulator.churn import REVERT_WITHIN, ChurnMix, mutate_once
from poller.simulator.index import DayFilters
from poller.simulator.partial import PartialSchedule
from poller.simulator.state import PROTECTED, visible_to_window
from tests.fixtures.simulator import APPKEY, MakeSimulator, settings_for
from tests.integration.harness import eventually

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
CJK = re.compile(r"[\u4e00-\u9fff]")


class Clock:
    """A settable clock in Beijing time."""

    def __init__(self) -> None:
        self.now = beijing_now().replace(second=30, microsecond=0)

    def __call__(self) -> datetime:
        return self.now


async def wait_for(condition: Any, within_s: float = 5.0) -> None:
    """Poll `condition()` until true or fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def all_records(sim: Simulator, **overrides: Any) -> list[Any]:
    async with WaiqinClient(settings_for(sim, **overrides), **FAST) as client:
        return [r async for p in client.iter_pages(Window()) for r in p.records]


async def pages(sim: Simulator, window: Window | None = None, **overrides: Any) -> list[list[Any]]:
    """The records of every page of one signed scan of `window`, page by page."""
    async with WaiqinClient(settings_for(sim, **overrides), **FAST) as client:
        return [p.records async for p in client.iter_pages(window or Window())]


async def scan_ids(sim: Simulator, window: Window | None = None, **overrides: Any) -> list[str]:
    return [r["task_id"] for page in await pages(sim, window, **overrides) for r in page]


async def admin(sim: Simulator, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One admin API call over HTTP: (status, decoded JSON body)."""
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"{sim.base_url}/admin{path}", **kwargs) as response:
        return response.status, await response.json()


def minute(moment: datetime) -> str:
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def old_task(sim: Simulator, days: int = 3) -> dict[str, Any]:
    """A live task created and last modified at least `days` days before the clock's today."""
    cutoff = (sim.clock().date() - timedelta(days=days)).isoformat()
    return next(t for t in sim.store.tasks.values() if t["modify_time"][:10] <= cutoff)


def day_of(time_text: str) -> date:
    return date.fromisoformat(time_text[:10])


def today_window(sim: Simulator) -> Window:
    today = sim.clock().date()
    return Window(modify_from=today, modify_to=today)


def create_day_window(task: dict[str, Any]) -> Window:
    return Window(create_from=day_of(task["create_time"]), create_to=day_of(task["create_time"]))


def record_of(records: list[list[Any]], task_id: str) -> dict[str, Any]:
    (found,) = [r for page in records for r in page if r["task_id"] == task_id]
    return dict(found)


class TestSeedData:
    def test_deterministic(self) -> None:
        """The same seed yields the same tasks."""
        a = Simulator("o", "k", seed=7, tasks=20).store.query()
        b = Simulator("o", "k", seed=7, tasks=20).store.query()
        assert [t["task_id"] for t in a] == [t["task_id"] for t in b]

    def test_realistic(self) -> None:
        """Seeded tasks cover every task_status, some deletions, Chinese text and sane times."""
        sim = Simulator("o", "k", tasks=200, days=30)
        tasks = list(sim.store.tasks.values())
        assert len(tasks) == 200
        assert {t["task_status"] for t in tasks} == {0, 1, 2, 3}
        assert {t["status"] for t in tasks} == {0, 1}
        assert all(CJK.search(t["task_content"]) for t in tasks)
        assert all(1 <= len(t["receivers"]) <= 3 for t in tasks)
        assert all(t["modify_time"] >= t["create_time"] for t in tasks)
        assert any(t["feedback_detail"] for t in tasks)
        assert len({t["create_time"][:10] for t in tasks}) > 15

    def test_drift_rendering(self) -> None:
        """Rendering drifts: numbers as numbers and strings, empty strings, varying key order."""
        sim = Simulator("o", "k", tasks=100)
        records = [sim.renderer.task(t) for t in sim.store.query()]
        assert {type(r["status"]) for r in records} == {int, str}
        assert any(v == "" for r in records for v in r.values())
        assert len({tuple(r) for r in records}) > 1


class TestRequestChecks:
    async def test_wrong_digest(self, simulator: Simulator) -> None:
        """A digest made with another appkey is refused with its own code."""
        with pytest.raises(SourceAuthError) as info:
            await all_records(simulator, appkey="wrong")
        assert info.value.code == CODE_BAD_DIGEST

    async def test_wrong_openid(self, simulator: Simulator) -> None:
        """An unknown openid is refused with its own code."""
        with pytest.raises(SourceAuthError) as info:
            await all_records(simulator, openid="someone-else")
        assert info.value.code == CODE_BAD_OPENID

    @pytest.mark.parametrize("minutes,accepted", [(11, False), (-11, False), (9, True)])
    async def test_timestamp_skew(self, make_simulator: MakeSimulator, minutes: int,
                                  accepted: bool) -> None:
        """A timestamp more than 10 minutes off the server's Beijing clock is refused."""
        sim = await make_simulator(clock=lambda: beijing_now() + timedelta(minutes=minutes))
        if accepted:
            assert len(await all_records(sim)) == 30
            return
        with pytest.raises(SourceAuthError, match="clock") as info:
            await all_records(sim)
        assert info.value.code == CODE_STALE_TIMESTAMP

    async def test_task_types_not_granted(self, make_simulator: MakeSimulator) -> None:
        """With queryTaskType not granted, it is refused while queryTask still works."""
        sim = await make_simulator(grant_task_types=False)
        async with WaiqinClient(settings_for(sim), **FAST) as client:
            with pytest.raises(SourceAuthError) as info:
                await client.query_task_types(["10001"])
        assert info.value.code == CODE_API_NOT_GRANTED
        assert len(await all_records(sim)) == 30

    @pytest.mark.parametrize("body", [
        {"page": 1, "rows": "10"}, {"page": "0"}, {"modify_date_from": "2024/01/01"},
        {"modify_date_to": "2024-01-01 00:00"},
    ])
    async def test_bad_params(self, simulator: Simulator, body: dict[str, Any]) -> None:
        """Non-string numbers, page 0 and malformed dates are refused as bad parameters."""
        async with WaiqinClient(settings_for(simulator), **FAST) as client:
            with pytest.raises(SourceResponseError) as info:
                await client.call(QUERY_TASK, body)
        assert info.value.code == CODE_BAD_PARAMS


class TestMutations:
    def test_status_rules(self) -> None:
        """Feedback gives 1, accept 2, reject 3, reopen 0; delete/restore flip status."""
        clock = Clock()
        sim = Simulator("o", "k", tasks=5, clock=clock)
        task_id = sim.create_task(task_content="巡店")["task_id"]
        clock.now += timedelta(minutes=3)
        task = sim.add_feedback(task_id, "已完成")
        stamp = clock.now.strftime("%Y-%m-%d %H:%M")
        assert (task["task_status"], task["modify_time"]) == (1, stamp)
        assert task["latest_feedback_time"] == stamp
        assert task["latest_feedback_content"] == "已完成"
        assert task["feedback_detail"][-1]["feedback_content"] == "已完成"
        assert sim.set_task_status(task_id, 2)["task_status"] == 2
        assert sim.set_task_status(task_id, 3)["task_status"] == 3
        assert sim.set_task_status(task_id, 0)["task_status"] == 0
        assert sim.delete(task_id)["status"] == 0
        assert sim.restore(task_id)["status"] == 1
        kinds = [e["kind"] for e in sim.ledger]
        assert kinds == ["create", "feedback", "task_status", "task_status", "task_status",
                         "delete", "restore"]
        assert [e["seq"] for e in sim.ledger] == list(range(1, 8))

    def test_reassign_deadline_update(self) -> None:
        """Reassign, deadline and field updates change the task and stamp modify_time."""
        clock = Clock()
        sim = Simulator("o", "k", tasks=5, clock=clock)
        task_id = next(iter(sim.store.tasks))
        people = [{"id": "1", "name": "王伟"}]
        assert sim.reassign(task_id, people)["receivers"] == people
        assert sim.set_deadline(task_id, "2030-01-01 10:00")["feedback_deadline"] \
            == "2030-01-01 10:00"
        task = sim.update_fields(task_id, task_content="新内容", ext_new="x")
        assert (task["task_content"], task["ext_new"]) == ("新内容", "x")
        assert task["modify_time"] == clock.now.strftime("%Y-%m-%d %H:%M")
        with pytest.raises(ValueError, match="modify_time"):
            sim.update_fields(task_id, modify_time="2020-01-01 00:00")
        with pytest.raises(KeyError):
            sim.add_feedback("no-such-task")

    async def test_type_update_served(self, simulator: Simulator) -> None:
        """A changed type name is what queryTaskType answers next."""
        simulator.update_type("10001", type_name="改名后的类型")
        async with WaiqinClient(settings_for(simulator), **FAST) as client:
            (record,) = await client.query_task_types(["10001"])
        assert record["type_name"] == "改名后的类型"

    async def test_change_mid_scan_drifts(self, make_simulator: MakeSimulator) -> None:
        """A task changed between pages moves to the end: one task skipped, one read twice."""
        clock = Clock()
        sim = await make_simulator(clock=clock)
        seen: list[str] = []
        async with WaiqinClient(settings_for(sim), **FAST) as client:
            async for page in client.iter_pages(Window()):
                if page.number == 1:
                    clock.now += timedelta(minutes=1)  # later than every seeded modify_time
                    sim.add_feedback(page.records[0]["task_id"])
                seen += [r["task_id"] for r in page.records]
        assert len(seen) == 30 and len(set(seen)) == 29


class TestAdminApi:
    async def test_task_lifecycle(self, simulator: Simulator) -> None:
        """Create, read and mutate a task over the admin API; the ledger records it all."""
        base = simulator.base_url + "/admin"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/tasks", json={"task_content": "新任务"}) as r:
                assert r.status == 201
                task_id = (await r.json())["task_id"]
            steps = [("feedback", {"content": "好"}, "task_status", 1),
                     ("status", {"task_status": 2}, "task_status", 2),
                     ("reassign", {"receivers": [{"id": "9", "name": "李娜"}]}, "receivers",
                      [{"id": "9", "name": "李娜"}]),
                     ("deadline", {"feedback_deadline": "2031-02-03 04:05"},
                      "feedback_deadline", "2031-02-03 04:05"),
                     ("delete", {}, "status", 0), ("restore", {}, "status", 1)]
            for action, body, field, value in steps:
                async with http.post(f"{base}/tasks/{task_id}/{action}", json=body) as r:
                    assert r.status == 200 and (await r.json())[field] == value
            async with http.patch(f"{base}/tasks/{task_id}", json={"customer_id": "c1"}) as r:
                assert (await r.json())["customer_id"] == "c1"
            async with http.get(f"{base}/tasks/{task_id}") as r:
                assert (await r.json())["status"] == 1
            async with http.get(f"{base}/ledger", params={"since": "1"}) as r:
                assert [e["kind"] for e in await r.json()] == [
                    "feedback", "task_status", "reassign", "deadline", "delete", "restore",
                    "update"]

    async def test_errors(self, simulator: Simulator) -> None:
        """Unknown tasks answer 404, bad input 400."""
        base = simulator.base_url + "/admin"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/tasks/nope") as r:
                assert r.status == 404
            task_id = next(iter(simulator.store.tasks))
            async with http.post(f"{base}/tasks/{task_id}/status", json={"task_status": 9}) as r:
                assert r.status == 400
            async with http.post(f"{base}/faults", json={"kind": "meteor"}) as r:
                assert r.status == 400

    async def test_faults_and_grants(self, simulator: Simulator) -> None:
        """Faults armed over HTTP hit the next requests; grants toggle queryTaskType."""
        base = simulator.base_url + "/admin"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/faults", json={"kind": "http_500", "count": 9}) as r:
                assert r.status == 201
            async with http.get(f"{base}/faults") as r:
                assert (await r.json())["armed"][0]["kind"] == "http_500"
            with pytest.raises(SourceUnavailable):
                await all_records(simulator, WAIQIN_MAX_ATTEMPTS=2)
            async with http.delete(f"{base}/faults") as r:
                assert (await r.json())["armed"] == []
            assert len(await all_records(simulator)) == 30
            async with http.post(f"{base}/grants", json={"queryTaskType": False}) as r:
                assert (await r.json())["queryTaskType"] is False
        assert simulator.grant_task_types is False

    async def test_churn(self, simulator: Simulator) -> None:
        """Churn started over HTTP mutates tasks into the ledger until stopped."""
        base = simulator.base_url + "/admin"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/churn", json={"per_s": 200}) as r:
                assert (await r.json())["churn_per_s"] == 200
            await wait_for(lambda: len(simulator.ledger) >= 10)
            async with http.delete(f"{base}/churn") as r:
                assert r.status == 200
        assert not simulator.churn.is_running
        assert {e["kind"] for e in simulator.ledger} <= {
            "create", "feedback", "task_status", "reassign", "deadline", "delete", "restore"}


class TestChurn:
    async def test_in_process(self) -> None:
        """start_churn mutates tasks in the background until stop_churn."""
        sim = Simulator("o", "k", tasks=10)
        await sim.start_churn(500)
        await wait_for(lambda: len(sim.ledger) >= 5)
        await sim.stop_churn()
        count = len(sim.ledger)
        assert not sim.churn.is_running
        await sim.stop()
        assert len(sim.ledger) == count

    def test_mix(self) -> None:
        """Random mutations cover every kind in the mix and keep the ledger consistent."""
        sim = Simulator("o", "k", tasks=20)
        rng = random.Random(3)
        for _ in range(300):
            mutate_once(sim.store, rng)
        kinds = {e["kind"] for e in sim.ledger}
        assert kinds == {"create", "feedback", "task_status", "reassign", "deadline", "delete",
                         "restore"}
        assert len(sim.ledger) == 300


class TestMalformed:
    @pytest.mark.parametrize("variant,check", [
        ("not_object", lambda r: not isinstance(r, dict)),
        ("missing_task_id", lambda r: isinstance(r, dict) and "task_id" not in r),
        ("receivers_not_list", lambda r: isinstance(r, dict)
         and isinstance(r.get("receivers"), str)),
    ])
    async def test_variants(self, simulator: Simulator, variant: str, check: Any) -> None:
        """Each malformed_record variant inserts one bad record into the next page."""
        simulator.inject("malformed_record", 1, variant=variant)
        records = await all_records(simulator, WAIQIN_PAGE_ROWS=100)
        assert len(records) == 31 and sum(1 for r in records if check(r)) == 1


    @pytest.mark.parametrize("as_string", [True, False], ids=["string", "array"])
    async def test_deeper_than_orjson_nests(self, make_simulator: MakeSimulator,
                                            as_string: bool) -> None:
        """A record nested 600 levels deep (beyond orjson's 254) is still served."""
        sim = await make_simulator(data_as_string=as_string)
        deep: Any = "底"
        for _ in range(600):
            deep = {"x": deep}
        sim.inject("malformed_record", 1, record={"task_id": "1", "x_deep": deep})
        body = orjson.dumps({"page": "1", "rows": "100"})
        stamp = beijing_now().strftime("%Y%m%d%H%M%S")
        url = (f"{sim.base_url}/api/cusTask/v1/queryTask/{sim.openid}/{stamp}/"
               f"{digest(body, APPKEY, stamp)}/m1")
        async with aiohttp.ClientSession() as http, http.post(url, data=body) as response:
            assert response.status == 200
            answer = json.loads(await response.read())
        data = json.loads(answer["response_data"]) if as_string else answer["response_data"]
        assert answer["return_code"] == "0" and len(data) == 31
        (record,) = [r for r in data if r["task_id"] == "1"]
        assert json.dumps(record["x_deep"]).count("{") == 600


class TestRunSimulator:
    async def test_serves_until_cancelled(self) -> None:
        """run_simulator logs its base URL, serves signed requests, and stops on cancel."""
        with capture_logs() as logs:
            task = asyncio.create_task(run_simulator(
                host="127.0.0.1", port=0, openid="o", appkey="k", tasks=12, days=3, seed=5,
                churn_per_s=0))
            await wait_for(lambda: any(e["event"] == "simulator_started" for e in logs))
        started = next(e for e in logs if e["event"] == "simulator_started")
        assert "k" not in {str(v) for v in started.values()}
        sim_settings = WaiqinSettings.model_validate(
            {"base_url": started["base_url"], "openid": "o", "appkey": "k"})
        async with WaiqinClient(sim_settings, **FAST) as client:
            records = [r async for p in client.iter_pages(Window()) for r in p.records]
        assert len(records) == 12
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def test_times_in_beijing(self) -> None:
        """modify_time stamps use Beijing wall time whatever zone the clock reports in."""
        utc_now = datetime(2024, 5, 1, 20, 30, tzinfo=BEIJING).astimezone(
            datetime.now().astimezone().tzinfo)
        sim = Simulator("o", "k", tasks=1, clock=lambda: utc_now)
        assert sim.create_task()["modify_time"] == "2024-05-01 20:30"


@pytest.fixture
async def history(make_simulator: MakeSimulator) -> Simulator:
    """A started simulator on a frozen clock with 60 tasks spread over 30 days (no drift)."""
    return await make_simulator(tasks=60, days=30, clock=Clock(), drift=False)


class TestSilentChanges:
    async def test_silent_feedback_keeps_modify_time(self, history: Simulator) -> None:
        """Feedback added with touch=false leaves modify_time as it was: today's window misses
        the task, its create-day slice shows the feedback, dated after modify_time."""
        task = old_task(history)
        status, after = await admin(
            history, "POST", f"/tasks/{task['task_id']}/feedback?touch=false",
            json={"content": "悄悄反馈"})
        assert status == 200 and after["modify_time"] == task["modify_time"]
        assert task["task_id"] not in await scan_ids(history, today_window(history))
        served = record_of(await pages(history, create_day_window(task)), task["task_id"])
        (entry,) = [f for f in served["feedback_detail"] if f["feedback_content"] == "悄悄反馈"]
        assert served["modify_time"] == task["modify_time"]
        assert entry["feedback_time"] == minute(history.clock()) > served["modify_time"]
        assert history.ledger[-1]["kind"] == "feedback"
        assert history.ledger[-1]["modify_time_moved"] is False

    async def test_silent_reassign_and_update(self, history: Simulator) -> None:
        """Receivers reassigned and fields updated with touch=false change the task, not its
        modify_time, and the ledger says modify_time did not move."""
        task = old_task(history)
        people = [{"id": "77", "name": "周杰"}]
        base = f"/tasks/{task['task_id']}"
        assert (await admin(history, "POST", f"{base}/reassign?touch=false",
                            json={"receivers": people}))[0] == 200
        assert (await admin(history, "PATCH", f"{base}?touch=0",
                            json={"task_content": "改了内容"}))[0] == 200
        served = record_of(await pages(history, create_day_window(task)), task["task_id"])
        assert (served["receivers"], served["task_content"]) == (people, "改了内容")
        assert served["modify_time"] == task["modify_time"]
        assert [(e["kind"], e["modify_time_moved"]) for e in history.ledger] == [
            ("reassign", False), ("update", False)]

    @pytest.mark.parametrize("query", [
        "touch=false&stamp_at=2024-01-01%2010:00", "touch=maybe", "stamp_at=yesterday",
        "stamp_at=2024-01-01%2010:00&stamp_days_ago=1", "stamp_days_ago=10000", "colour=red",
    ])
    async def test_bad_stamp_options(self, history: Simulator, query: str) -> None:
        """Contradictory, malformed, unknown or impossible (before creation) stamp options
        answer 400 and change nothing."""
        task = old_task(history)
        status, body = await admin(history, "POST", f"/tasks/{task['task_id']}/status?{query}",
                                   json={"task_status": 2})
        assert status == 400 and body["error"]
        assert history.ledger == [] and history.get_task(task["task_id"]) == task


class TestPastStamps:
    async def test_stamped_days_ago(self, history: Simulator) -> None:
        """A write stamped two days ago is invisible to today's window and visible to that
        day's; the ledger says modify_time moved, to a day only a wider window covers."""
        task = old_task(history, days=5)
        status, after = await admin(
            history, "POST", f"/tasks/{task['task_id']}/status?stamp_days_ago=2",
            json={"task_status": 3})
        stamped = history.clock() - timedelta(days=2)
        assert status == 200 and after["modify_time"] == minute(stamped)
        assert task["task_id"] not in await scan_ids(history, today_window(history))
        that_day = Window(modify_from=stamped.date(), modify_to=stamped.date())
        assert record_of(await pages(history, that_day), task["task_id"])["task_status"] == "3"
        (entry,) = history.ledger
        assert entry["modify_time_moved"] is True and entry["modify_time"] == minute(stamped)
        assert not visible_to_window(entry, history.clock().date())
        assert visible_to_window(entry, stamped.date())

    def test_stamp_at_in_process(self) -> None:
        """stamp_at takes a Beijing time string or a datetime in any zone."""
        clock = Clock()
        sim = Simulator("o", "k", tasks=40, days=30, clock=clock)
        task_id = old_task(sim, days=5)["task_id"]
        earlier = clock.now - timedelta(days=1, hours=3)
        assert sim.set_deadline(task_id, stamp_at=earlier.astimezone(UTC))[
            "modify_time"] == minute(earlier)
        assert sim.reassign(task_id, stamp_at=minute(earlier - timedelta(hours=1)))[
            "modify_time"] == minute(earlier - timedelta(hours=1))


class TestHardDeletes:
    async def test_vanishes_then_reappears_as_it_was(self, history: Simulator) -> None:
        """A hard-deleted task is gone from every answer and the admin API; reappearing, it
        comes back exactly as it was, modify_time included, and both steps are ledgered as
        not moving modify_time."""
        task = old_task(history)
        before = record_of(await pages(history, create_day_window(task)), task["task_id"])
        assert (await admin(history, "POST", f"/tasks/{task['task_id']}/hard_delete"))[0] == 200
        assert task["task_id"] not in await scan_ids(history)
        assert task["task_id"] not in await scan_ids(history, create_day_window(task))
        status, body = await admin(history, "GET", f"/tasks/{task['task_id']}")
        assert status == 404 and "hard-deleted" in body["error"]
        assert (await admin(history, "GET", "/"))[1]["hard_deleted"] == 1
        assert (await admin(history, "POST", f"/tasks/{task['task_id']}/reappear"))[0] == 200
        assert record_of(await pages(history, create_day_window(task)), task["task_id"]) == before
        assert [(e["kind"], e["modify_time_moved"], e["modify_time"]) for e in history.ledger] \
            == [("hard_delete", False, task["modify_time"]),
                ("reappear", False, task["modify_time"])]

    async def test_reappears_changed(self, history: Simulator) -> None:
        """A task may come back changed, with modify_time stamped when asked."""
        task_id = old_task(history)["task_id"]
        history.hard_delete(task_id)
        status, after = await admin(history, "POST", f"/tasks/{task_id}/reappear?touch=true",
                                    json={"task_content": "回来了"})
        assert status == 200 and after["task_content"] == "回来了"
        assert task_id in await scan_ids(history, today_window(history))
        assert history.ledger[-1]["modify_time_moved"] is True

    async def test_misuse(self, history: Simulator) -> None:
        """Reappearing a live task, stamping a hard delete or deleting twice answer 400."""
        task_id = old_task(history)["task_id"]
        assert (await admin(history, "POST", f"/tasks/{task_id}/reappear"))[0] == 400
        assert (await admin(history, "POST", f"/tasks/{task_id}/hard_delete?touch=false"))[0] \
            == 400
        history.hard_delete(task_id)
        assert (await admin(history, "POST", f"/tasks/{task_id}/hard_delete"))[0] == 400
        assert (await admin(history, "POST", f"/tasks/{task_id}/feedback"))[0] == 404


class TestPartialPages:
    async def test_fault_leaves_records_out_consistently(self, history: Simulator) -> None:
        """While partial_pages is armed the same records are missing from every read, pages
        keep their full shape (only the last one is short), create-day filters still apply,
        and disarming serves everything again."""
        everything = await scan_ids(history)
        slice_window = Window(create_from=history.clock().date() - timedelta(days=20),
                              create_to=history.clock().date())
        in_slice = await scan_ids(history, slice_window)
        status, fault = await admin(history, "POST", "/faults",
                                    json={"kind": "partial_pages", "count": 100, "fraction": 0.5})
        assert status == 201 and fault["params"]["fraction"] == 0.5
        first = await pages(history)
        assert [len(p) for p in first[:-1]] == [10] * (len(first) - 1) and len(first[-1]) < 10
        kept = [r["task_id"] for p in first for r in p]
        assert 0.25 * len(everything) < len(kept) < 0.75 * len(everything)
        assert set(kept) < set(everything) and await scan_ids(history) == kept
        assert await scan_ids(history, slice_window) == [t for t in in_slice if t in kept]
        await admin(history, "DELETE", "/faults")
        assert await scan_ids(history) == everything

    async def test_deterministic_with_the_seed(self, make_simulator: MakeSimulator) -> None:
        """Two simulators with one seed leave out the same records; a new episode others."""
        one, two = [await make_simulator(tasks=60, seed=9, clock=Clock()) for _ in range(2)]
        for sim in (one, two):
            sim.inject("partial_pages", 100, fraction=0.5)
        assert await scan_ids(one) == await scan_ids(two)
        one.faults.clear()
        one.inject("partial_pages", 100, fraction=0.5)
        assert await scan_ids(one) != await scan_ids(two)

    async def test_for_some_seconds(self, history: Simulator) -> None:
        """A partial_pages fault armed for some seconds hits every read until it expires."""
        everything = await scan_ids(history)
        history.inject("partial_pages", seconds=1.0, fraction=0.5)
        assert len(await scan_ids(history)) < len(everything)
        assert len(await scan_ids(history)) < len(everything)  # not used up by a count
        assert await eventually(lambda: _same(scan_ids(history), everything), timeout_s=10,
                                what="the fault to expire")

    async def test_recurring_episodes(self, make_simulator: MakeSimulator) -> None:
        """With a partial schedule the server starts leaving records out once the first
        episode begins."""
        sim = await make_simulator(tasks=60, partial=PartialSchedule(0.5, every_s=0.3,
                                                                     for_s=0.3))
        assert await eventually(lambda: _shorter(scan_ids(sim), 45), timeout_s=10,
                                what="a partial episode")

    @pytest.mark.parametrize("elapsed,episode", [
        (0.0, None), (9.9, None), (10.0, 1), (11.9, 1), (12.0, None), (20.5, 2), (41.0, 4)])
    def test_schedule(self, elapsed: float, episode: int | None) -> None:
        """Episodes start every `every_s` seconds (the first after one period), last `for_s`."""
        assert PartialSchedule(0.5, every_s=10, for_s=2).episode(elapsed) == episode

    @pytest.mark.parametrize("fraction,every_s,for_s", [(1.5, 10, 2), (0.5, 0, 1), (0.5, 5, 6)])
    def test_bad_schedule(self, fraction: float, every_s: float, for_s: float) -> None:
        """A fraction outside [0, 1] or an episode longer than its period is refused."""
        with pytest.raises(ValueError):
            PartialSchedule(fraction, every_s=every_s, for_s=for_s)


async def _same(ids: Any, expected: list[str]) -> bool:
    return await ids == expected


async def _shorter(ids: Any, limit: int) -> bool:
    return len(await ids) < limit


class TestLateFeedback:
    async def test_seeded_feedback_after_modify_time(self, make_simulator: MakeSimulator) -> None:
        """With late_feedback=1 every seeded task with feedback, modified before now, has
        its feedback dated after its modify_time, as in the vendor's own sample record."""
        sim = await make_simulator(tasks=80, days=30, late_feedback=1.0, clock=Clock())
        now = minute(sim.clock())
        records = [r for p in await pages(sim) for r in p
                   if r["feedback_detail"] and r["modify_time"] < now]
        assert len(records) > 20
        assert all(f["feedback_time"] > r["modify_time"] for r in records
                   for f in r["feedback_detail"])
        assert all(r["latest_feedback_time"] == max(f["feedback_time"]
                                                    for f in r["feedback_detail"])
                   for r in records)


class TestRevert:
    async def test_back_and_forth(self, history: Simulator) -> None:
        """revert puts a task back to its state before its last change; reverting again goes
        forward; the ledger names the change undone."""
        task = old_task(history)
        base = f"/tasks/{task['task_id']}"
        await admin(history, "POST", f"{base}/reassign", json={"receivers": [{"id": "1",
                                                                              "name": "王伟"}]})
        await admin(history, "PATCH", base, json={"ext_flag": "x"})
        status, back = await admin(history, "POST", f"{base}/revert")
        assert status == 200 and "ext_flag" not in back
        assert back["receivers"] == [{"id": "1", "name": "王伟"}]
        assert history.ledger[-1]["detail"] == {"reverts": 2, "fields": ["ext_flag"]}
        forward = (await admin(history, "POST", f"{base}/revert"))[1]
        assert forward["ext_flag"] == "x"

    async def test_nothing_to_revert(self, history: Simulator) -> None:
        """A task the store never changed cannot be reverted (400)."""
        status, body = await admin(history, "POST", f"/tasks/{old_task(history)['task_id']}/revert")
        assert status == 400 and "revert" in body["error"]


def content(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k not in PROTECTED}


class TestChurnMix:
    async def test_silent_churn_over_http(self, history: Simulator) -> None:
        """Churn started with silent=1 over the admin API never moves an existing task's
        modify_time, and the mix is shown."""
        status, shown = await admin(history, "POST", "/churn", json={"per_s": 300,
                                                                      "silent": 1.0})
        assert status == 200 and shown["mix"]["silent"] == 1.0
        await wait_for(lambda: len(history.ledger) >= 30)
        await admin(history, "DELETE", "/churn")
        changes = [e for e in history.ledger if e["kind"] != "create"]
        assert changes and not any(e["modify_time_moved"] for e in changes)
        assert (await admin(history, "GET", "/churn"))[1]["mix"]["silent"] == 1.0

    @pytest.mark.parametrize("body", [{"per_s": 1, "loud": 0.5}, {"per_s": 1, "silent": 2},
                                      {"per_s": 1, "silent": 0.6, "past": 0.6}])
    async def test_bad_mix(self, history: Simulator, body: dict[str, Any]) -> None:
        """Unknown habits and fractions out of range answer 400."""
        status, answer = await admin(history, "POST", "/churn", json=body)
        assert status == 400 and "churn" in answer["error"]

    def test_past_churn(self) -> None:
        """With past=1 every change is stamped 1 to past_days days ago (never before the task
        was created)."""
        clock = Clock()
        sim = Simulator("o", "k", tasks=50, days=30, clock=clock)
        rng = random.Random(4)
        for _ in range(200):
            mutate_once(sim.store, rng, ChurnMix(past=1.0, past_days=3))
        changes = [e for e in sim.ledger if e["kind"] != "create"]
        created = {t: v["create_time"] for t, v in sim.store.tasks.items()}
        assert changes and all(e["modify_time_moved"] for e in changes)
        window = (minute(clock.now - timedelta(days=3, minutes=60)),
                  minute(clock.now - timedelta(days=1)))
        assert all(window[0] <= e["modify_time"] <= window[1]
                   or e["modify_time"] == created[e["task_id"]] for e in changes)

    def test_reverts_within_a_minute(self) -> None:
        """Reverting churn makes A -> B -> A sequences: each revert restores the content the
        task had before the change it undoes, a change made within the last minute."""
        clock = Clock()
        sim = Simulator("o", "k", tasks=30, days=10, clock=clock)
        rng = random.Random(8)
        states: dict[int, dict[str, Any]] = {}  # seq -> content after that change
        last: dict[str, int] = {}
        before_change: dict[int, dict[str, Any]] = {}
        for _ in range(300):
            clock.now += timedelta(seconds=5)
            seen = {t: content(v) for t, v in sim.store.tasks.items()}
            after = mutate_once(sim.store, rng, ChurnMix(revert=0.4))
            entry = sim.ledger[-1]
            if entry["kind"] != "create":
                before_change[entry["seq"]] = seen[entry["task_id"]]
            states[entry["seq"]] = content(after)
            last[entry["task_id"]] = entry["seq"]
        reverts = [e for e in sim.ledger if e["kind"] == "revert"]
        assert len(reverts) > 50
        for entry in reverts:
            undone = sim.ledger[entry["detail"]["reverts"] - 1]
            assert states[entry["seq"]] == before_change[undone["seq"]]
            assert datetime.strptime(entry["at"], "%Y-%m-%d %H:%M") - datetime.strptime(
                undone["at"], "%Y-%m-%d %H:%M") <= REVERT_WITHIN

    def test_hard_deletes_and_reappearances(self) -> None:
        """Churn with hard deletes and reappearances keeps the store, its index and the
        ledger consistent: removed tasks are in no answer."""
        sim = Simulator("o", "k", tasks=40, days=10)
        rng = random.Random(5)
        for _ in range(300):
            mutate_once(sim.store, rng, ChurnMix(hard_delete=0.2, reappear=0.1, silent=0.3))
        kinds = {e["kind"] for e in sim.ledger}
        assert {"hard_delete", "reappear"} <= kinds
        served = {t["task_id"] for t in sim.store.query()}
        assert served == set(sim.store.tasks) and not served & set(sim.store.removed)
        assert sim.store.removed

    @pytest.mark.parametrize("values,message", [
        ({"silent": -0.1}, "silent"), ({"revert": 0.7, "hard_delete": 0.4}, "exceed"),
        ({"past_days": 0}, "past_days"), ({"hourly": 1}, "unknown"), ({"past": "x"}, "bad")])
    def test_mix_validation(self, values: dict[str, Any], message: str) -> None:
        """A mix with a bad fraction, an impossible sum or an unknown habit is refused."""
        with pytest.raises(ValueError, match=message):
            ChurnMix.from_mapping(values)


class TestLedger:
    @pytest.mark.parametrize("moved,stamped,visible", [
        (True, "2026-03-12 09:00", True), (True, "2026-03-11 23:59", False),
        (False, "2026-03-12 09:00", False), (True, None, False)])
    def test_visible_to_window(self, moved: bool, stamped: str | None, visible: bool) -> None:
        """Only a change that moved modify_time into the window is the window's to find."""
        entry = {"modify_time_moved": moved, "modify_time": stamped}
        assert visible_to_window(entry, date(2026, 3, 12)) is visible

    def test_entries_say_whether_modify_time_moved(self) -> None:
        """Every ledger entry carries modify_time_moved and the modify_time after the change."""
        sim = Simulator("o", "k", tasks=20)
        rng = random.Random(2)
        for _ in range(100):
            mutate_once(sim.store, rng, ChurnMix(silent=0.3, past=0.3, hard_delete=0.1,
                                                 reappear=0.1, revert=0.2))
        sim.update_type("10001", type_name="x")
        assert all({"modify_time", "modify_time_moved", "at"} <= e.keys() for e in sim.ledger)
        assert {e["modify_time_moved"] for e in sim.ledger} == {True, False}


class TestIndex:
    @settings(max_examples=40, deadline=None)
    @given(seed=st.integers(0, 1000), lo=st.integers(0, 40), span=st.integers(0, 40),
           by_create=st.booleans(), by_modify=st.booleans(), offset=st.integers(0, 80),
           rows=st.integers(1, 50), keep_mod=st.integers(1, 4))
    def test_pages_match_a_full_sort(self, seed: int, lo: int, span: int, by_create: bool,
                                     by_modify: bool, offset: int, rows: int,
                                     keep_mod: int) -> None:
        """After every kind of mutation, an indexed page equals filtering and sorting the
        whole store, with or without day filters and left-out records."""
        clock = Clock()
        sim = Simulator("o", "k", seed=seed, tasks=120, days=30, clock=clock)
        rng = random.Random(seed)
        for _ in range(60):
            clock.now += timedelta(minutes=rng.randrange(3))
            mutate_once(sim.store, rng, ChurnMix(silent=0.2, past=0.2, hard_delete=0.1,
                                                 reappear=0.1, revert=0.2))
        first = clock.now.date() - timedelta(days=lo)
        last = first + timedelta(days=span)
        filters = DayFilters(
            modify_from=first if by_modify else None, modify_to=last if by_modify else None,
            create_from=first if by_create else None, create_to=last if by_create else None)

        def keep(task_id: str) -> bool:
            return int(task_id) % keep_mod != 0

        expected = sorted(
            (t for t in sim.store.tasks.values()
             if (not by_modify or first.isoformat() <= t["modify_time"][:10] <= last.isoformat())
             and (not by_create or first.isoformat() <= t["create_time"][:10] <= last.isoformat())
             and keep(t["task_id"])),
            key=lambda t: (t["modify_time"], len(t["task_id"]), t["task_id"]))
        got = sim.store.page(filters, offset=offset, rows=rows, keep=keep)
        assert [t["task_id"] for t in got] == [t["task_id"] for t in expected][offset:offset + rows]

    def test_years_of_history(self) -> None:
        """Seeding over 1,200 days spreads create dates over more than three years."""
        sim = Simulator("o", "k", tasks=3000, days=1200)
        created = sorted(t["create_time"] for t in sim.store.tasks.values())
        assert day_of(created[-1]) - day_of(created[0]) > timedelta(days=3 * 365)
        assert len({c[:10] for c in created}) > 900
