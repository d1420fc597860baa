"""Tests for the simulator: seed data, request checks, mutations, admin API, faults, churn."""

from __future__ import annotations

import asyncio
import random
import re
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
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
from poller.simulator import Simulator, run_simulator
from poller.simulator.churn import mutate_once
from tests.fixtures.simulator import MakeSimulator, settings_for

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
