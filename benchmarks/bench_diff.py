"""Benchmark: normalisation and diff of re-rendered records against the parse/dump/hash floor.

Run: `python benchmarks/bench_diff.py [--tasks N] [--days D] [--repeat R] [--before REV] [--check]`.

Records: the simulator's seed data (`Generator.seed_tasks(N, D, now)`) rendered with drift
(`Renderer(drift=True)`: numbers as numbers or strings, keys and sets shuffled, "" or missing for
absent values), as 1000-record queryTask responses. A rendering the store has not seen goes
through `normalise.task`, so this is the cost of every record when every response is
re-rendered. Per record, best of R rounds, the cases taking turns each round:

- floor:           orjson.loads of the response + orjson.dumps(OPT_SORT_KEYS) + xxh3_128 per
                   record, the least any content-hash change detector has to do;
- loads:           orjson.loads of the response alone (the share every case pays);
- received hash:   loads + `normalise.received_hash` (an unchanged rendering: one dump + hash);
- task, now:       loads + `normalise.task`;
- task, before:    loads + the memo-less `_task` of the code at REV (default: the commit before
                   `poller/normalise/` replaced `normalise.py` + `fastpath.py`), read from git;
- unchanged diff:  loads + `normalise.task` + `diff.observe` against the stored snapshot;
- changed diff:    the same for a changed rendering of every task, + CloudEvents encoding.

"retained" is what one pass leaves allocated (tracemalloc): caches show up there.
Targets (issue 10): `task` at least 3x faster than before, and its own cost (the case minus
loads) at most about the floor's.
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import xxhash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller import diff, events, normalise  # noqa: E402
from poller.models import BEIJING, Snapshot  # noqa: E402
from poller.simulator.generate import Generator  # noqa: E402
from poller.simulator.render import Renderer  # noqa: E402

PAGE_SIZE = 1000
NOW = datetime(2024, 5, 20, 10, 0, tzinfo=BEIJING)
OBSERVED_AT = NOW
FLOOR, LOADS, TASK_NOW = "floor (loads + sorted dump + xxh3_128)", "loads alone", "task, now"


NAMES = ["lm", "张三", "李四", "王五", "赵六", "孙七", "周八", "吴九"]
CONTENT = [
    "门店巡检：检查陈列与价签", "客户回访，确认上月订单到货情况", "新品铺货任务",
    "收集竞品价格信息", "协助客户完成年度对账", "拜访并拍照上传门头照片",
]


def api_time(base: datetime, minutes: int) -> str:
    return (base + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M")


def record(i: int, rng: random.Random, *, changed: bool = False) -> dict[str, Any]:
    """One realistic queryTask item (the vendor's shape, with the usual type drift), made one
    at a time: memscan.py and run.py need records without holding a whole window in memory."""
    day = datetime(2024, 5, 20, 8, 0)
    feedback = [
        {"feedback_content": f"第{n + 1}次反馈：{rng.choice(CONTENT)}",
         "feedback_visit_id": str(6881395042783735132 + i * 10 + n),
         "feedback_time": api_time(day, i % 300 + n * 7)}
        for n in range(i % 4)
    ]
    status = i % 4
    if changed:
        feedback.append({"feedback_content": "补充反馈", "feedback_visit_id": str(9 * 10**17 + i),
                         "feedback_time": api_time(day, 400)})
        status = (status + 1) % 4
    receivers = [
        {"name": NAMES[(i + n) % len(NAMES)], "id": str(4622857986008792650 + (i + n) % 50)}
        for n in range(1 + i % 3)
    ]
    return {
        "status": 1 if i % 10 else "1",
        "task_status": str(status),
        "create_time": api_time(datetime(2024, 5, 1, 9, 0), i),
        "execute_demand": str(i % 3),
        "feedback_deadline": api_time(datetime(2024, 6, 1, 18, 0), (i % 30) * 60),
        "modify_time": api_time(day, i % 600 + (1 if changed else 0)),
        "latest_feedback_content": feedback[-1]["feedback_content"] if feedback else "",
        "task_id": str(7000000000000000000 + i),
        "task_source_name": f"任务来源{i % 5}",
        "task_source_id": str(10001 + i % 5),
        "visit_implement_id": str(20001 + i),
        "latest_feedback_time": feedback[-1]["feedback_time"] if feedback else "",
        "task_type_id": str(10001 + i % 8),
        "receivers": receivers,
        "creator": {"name": NAMES[i % len(NAMES)], "id": str(4622857986008792650 + i % 20)},
        "task_content": rng.choice(CONTENT) + ("（已更新）" if changed else ""),
        "customer_id": str(7269195022934925565 + i % 200),
        "feedback_detail": feedback,
    }


def responses(tasks: int, days: int) -> tuple[list[bytes], list[bytes]]:
    """The queryTask responses of the seed tasks, and of every task changed once, with drift."""
    canonical = Generator(seed=7, types=12).seed_tasks(tasks, days, NOW)
    renderer = Renderer(seed=7, drift=True)
    changed = [{**task, "task_content": task["task_content"] + "（已更新）",
                "task_status": (task["task_status"] + 1) % 4} for task in canonical]
    return _pages([renderer.task(t) for t in canonical]), _pages([renderer.task(t) for t in changed])


def _pages(records: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps({"return_code": "0", "return_msg": "成功", "msg_id": "bench",
                          "response_data": records[start:start + PAGE_SIZE]})
            for start in range(0, len(records), PAGE_SIZE)]


def per_record(pages: list[bytes], work: Callable[[Any], object]) -> Callable[[], None]:
    def run() -> None:
        for page in pages:
            for raw in orjson.loads(page)["response_data"]:
                work(raw)
    return run


def floor_record(raw: Any) -> None:
    xxhash.xxh3_128_hexdigest(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS))


def loads_only(pages: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for page in pages:
            orjson.loads(page)
    return run


def before_normalise(rev: str | None) -> tuple[types.ModuleType | None, str]:
    """`normalise.py` + `fastpath.py` as of `rev`, loaded from git; (None, why) when unavailable."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    try:
        if rev is None:
            removed = git("log", "-1", "--format=%H", "--diff-filter=D", "--", "poller/fastpath.py").strip()
            if not removed:
                return None, "no commit removes poller/fastpath.py"
            rev = removed + "^"
        fastpath = types.ModuleType("before_fastpath")
        exec(compile(git("show", f"{rev}:poller/fastpath.py"), "before/fastpath.py", "exec"),
             fastpath.__dict__)
        module = types.ModuleType("before_normalise")
        module.__dict__["fastpath"] = fastpath
        source = git("show", f"{rev}:poller/normalise.py").replace("from poller import fastpath\n", "")
        exec(compile(source, "before/normalise.py", "exec"), module.__dict__)
    except (OSError, subprocess.CalledProcessError, SyntaxError) as exc:
        return None, f"cannot load the code at {rev}: {exc}"
    return module, git("rev-parse", "--short", rev).strip()


def stored(pages: list[bytes]) -> dict[str, Snapshot]:
    """The snapshots a silent baseline of `pages` leaves in the store."""
    store = {}
    for page in pages:
        for raw in orjson.loads(page)["response_data"]:
            task = normalise.task(raw)
            snapshot = diff.observe(None, task, observed_at=OBSERVED_AT, silent=True).snapshot(task)
            assert snapshot is not None
            store[task.task_id] = snapshot
    return store


def observe(store: dict[str, Snapshot]) -> Callable[[Any], None]:
    def work(raw: Any) -> None:
        task = normalise.task(raw)
        for event in diff.observe(store.get(task.task_id), task, observed_at=OBSERVED_AT).events:
            events.encode(event, source="bench")
    return work


def best_times(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """The fastest run of each case, in seconds. Cases take turns every round, so a burst of
    load from other processes hits them all alike instead of skewing one ratio."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, run in cases.items():
            gc.collect()
            gc.disable()  # as timeit does: no case pays for another's garbage
            try:
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
            finally:
                gc.enable()
    return best


def retained(run: Callable[[], None]) -> int:
    """Bytes still allocated after one run (results dropped): what a cache keeps."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="seed tasks (default 20,000)")
    parser.add_argument("--days", type=int, default=30, help="days of history (default 30)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (best run of each kept)")
    parser.add_argument("--before", help="git revision to compare with (default: before the package)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    pages, changed_pages = responses(args.tasks, args.days)
    old, before_rev = before_normalise(args.before)
    store = stored(pages)
    cases = {
        FLOOR: per_record(pages, floor_record),
        LOADS: loads_only(pages),
        "received hash (unchanged rendering)": per_record(pages, normalise.received_hash),
        TASK_NOW: per_record(pages, normalise.task),
    }
    if old is not None:
        cases[f"task, before ({before_rev}, memo-less _task)"] = per_record(pages, old._task)
    cases["unchanged diff (task + observe)"] = per_record(pages, observe(store))
    cases["changed diff (+ events + encode)"] = per_record(changed_pages, observe(store))
    results = best_times(cases, args.repeat)

    floor_s, loads_s, now_s = results[FLOOR], results[LOADS], results[TASK_NOW]
    print(f"{args.tasks:,} tasks over {args.days} days, rendered with drift, "
          f"{len(pages)} responses of {PAGE_SIZE}; best of {args.repeat} rounds")
    print(f"{'case':<46} {'µs/record':>9} {'x floor':>8} {'own µs':>7} {'own/floor':>9}")
    for name, seconds in results.items():
        own = seconds if name in (FLOOR, LOADS) else seconds - loads_s
        print(f"{name:<46} {seconds / args.tasks * 1e6:9.2f} {floor_s / seconds:8.2f} "
              f"{own / args.tasks * 1e6:7.2f} {own / floor_s:9.2f}")
    own_now = now_s - loads_s
    print(f"retained after one pass: task, now {retained(cases[TASK_NOW]):,} bytes", end="")
    ok = own_now <= 1.25 * floor_s
    if old is not None:
        before_s = results[f"task, before ({before_rev}, memo-less _task)"]
        speedup = (before_s - loads_s) / own_now
        print(f"; before with its memo {retained(per_record(pages, old.task)):,} bytes")
        print(f"task speed-up, own cost before / now: {speedup:.2f}x")
        ok = ok and speedup >= 3
    else:
        print(f"\nbefore: not measured ({before_rev})")
    print(f"targets (task >= 3x faster than before, own cost <= ~1x floor): {'met' if ok else 'MISSED'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
