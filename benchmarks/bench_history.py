"""What reading the whole history costs: requests a day, a big first run, the sweep's toll on latency.

Run: `python benchmarks/bench_history.py [--tasks 1000000] [--scaled 100000] [--skip-first-run]`.

- requests per day for a history of `--tasks` tasks over three years at the defaults (interval
  60 s, rows 1000, a 24 h sweep period, 10-page slices), computed by the scheduler, and measured
  on a scaled run: one sweep pass over `--scaled` tasks against the simulator, requests counted by
  the simulator, scaled up;
- a first run of `--tasks` tasks against the simulator (its own process, rate limit lifted): wall
  time and the poller's peak RSS (a subprocess, VmHWM), against the simulator's own time to serve
  the same pages (the floor of what the API can deliver);
- the window's delay caused by sweep pages: p95 mutation -> event latency with the sweep off and
  with a sweep reading pages every cycle, same run (daemon subprocess, interval 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, simulator_process, simulator_requests
from poller import schedule

YEARS_DAYS = 3 * 365


def projected(tasks: int) -> dict[str, float]:
    """Requests a day at the defaults for `tasks` spread evenly over three years."""
    today = date.today()
    per_day = tasks / YEARS_DAYS
    counts = {today - timedelta(days=n): round(per_day) for n in range(YEARS_DAYS)}
    pass_pages = schedule.pages_per_pass(counts, today, rows=1000, max_pages=10)
    window = 86400 / 60  # one page a cycle: today's changes fit one page
    return {"pages_per_pass": pass_pages, "window": window,
            "per_day": schedule.projected_per_day(window_requests=1, interval_s=60,
                                                  pages_per_pass=pass_pages, period_h=24)}


async def scaled_sweep(tasks: int, work: Path) -> dict[str, Any]:
    """One sweep pass over `tasks` (in-process poller, simulator in its own process): the
    queryTask requests it cost, against the scheduler's prediction for the same history."""
    from benchmarks.common import in_process_poller, settings

    sim, base_url = simulator_process(tasks, YEARS_DAYS, work / "sweep-sim.log", drift=False)
    try:
        cfg = settings(base_url, f"sqlite:///{work / 'sweep.db'}",
                       POLLER_SWEEP_PERIOD_HOURS="0.00001", POLLER_POLL_INTERVAL="60")
        poller, client, store, lease = await in_process_poller(cfg)
        try:
            while not (await store.load_state()).baseline_complete:
                await poller.run_cycle(lease)
            predicted = await poller.history.pages_per_pass()
            passes = (await store.load_state()).sweep.passes
            before = (await simulator_requests(base_url)).get("queryTask", 0)
            cycles = 0
            while (await store.load_state()).sweep.passes == passes:  # one whole pass
                await poller.run_cycle(lease)
                cycles += 1
            # The cycles' window pages (one each) are counted too: a day has them as well.
            cost = (await simulator_requests(base_url)).get("queryTask", 0) - before - cycles
        finally:
            await client.stop()
            await store.stop()
    finally:
        sim.terminate()
        sim.wait(10)
    return {"tasks": tasks, "requests": cost, "predicted": predicted}


def first_run(tasks: int, work: Path) -> dict[str, Any]:
    """A first run of `tasks` in a subprocess against the simulator; time and peak RSS."""
    sim, base_url = simulator_process(tasks, YEARS_DAYS, work / "first-sim.log", drift=False)
    try:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(Path(__file__)), "--child-first-run", base_url,
             str(work / "first.db")], capture_output=True, text=True, cwd=ROOT, check=True)
        wall = time.perf_counter() - started
        child = json.loads(out.stdout.strip().splitlines()[-1])
        floor = asyncio.run(_serve_only(base_url, child["requests"]))
    finally:
        sim.terminate()
        sim.wait(10)
    return {"tasks": tasks, "wall_s": wall, **child, "serve_only_s": floor}


async def _child_first_run(base_url: str, db: str) -> None:
    from benchmarks.common import in_process_poller, settings
    from benchmarks.memscan import rss_mb

    cfg = settings(base_url, f"sqlite:///{db}", POLLER_SWEEP_PERIOD_HOURS="0",
                   POLLER_POLL_INTERVAL="3600")
    poller, client, store, lease = await in_process_poller(cfg)
    start = rss_mb()
    try:
        started = time.perf_counter()
        cycles = 0
        while not (await store.load_state()).baseline_complete:
            await poller.run_cycle(lease)
            cycles += 1
        elapsed = time.perf_counter() - started
        print(json.dumps({"first_run_s": elapsed, "cycles": cycles, "start_mb": start,
                          "peak_mb": rss_mb(), "stored": await store.count_tasks(),
                          "requests": client.requests["queryTask"]}))
    finally:
        await client.stop()
        await store.stop()


async def _serve_only(base_url: str, requests: int) -> float:
    """The simulator's own time for the same number of 1000-row pages, fetched one after another
    without processing: what the API side costs."""
    from benchmarks.common import settings
    from poller.fetch import WaiqinClient
    from poller.models import Window

    cfg = settings(base_url, "sqlite:///unused.db")
    async with WaiqinClient(cfg.waiqin) as client:
        started = time.perf_counter()
        pages = 0
        async for _page in client.iter_pages(Window(), max_pages=requests):
            pages += 1
        return time.perf_counter() - started


async def latency(work: Path, *, sweep: bool, mutations: int = 20) -> dict[str, float]:
    """p95 mutation -> event with the daemon's interval at 1 s, the sweep off or busy."""
    from aiokafka import AIOKafkaConsumer

    from poller.localbroker import TansuBroker
    from poller.simulator import Simulator
    from tests.integration.harness import OPENID, Daemon

    sim = Simulator(OPENID, "it-appkey-秘密", tasks=20_000, days=YEARS_DAYS, seed=5, drift=False)
    await sim.start("127.0.0.1", 0)
    broker = TansuBroker(work)
    broker.start()
    arrived: dict[str, float] = {}
    mutated: dict[str, float] = {}
    name = "on" if sweep else "off"
    try:
        daemon = Daemon.configured(
            base_url=sim.base_url, bootstrap=broker.bootstrap,
            store_url=f"sqlite:///{work / f'lat-{name}.db'}", prefix=f"lat{name}", log_dir=work,
            POLLER_POLL_INTERVAL="1", POLLER_TOPIC_PARTITIONS="1", LOG_LEVEL="WARNING",
            WAIQIN_RATE_LIMIT_PER_SECOND="50",
            # busy: a 20k history swept every 2 minutes reads a page or so every cycle
            POLLER_SWEEP_PERIOD_HOURS="0.033" if sweep else "0")
        with daemon:
            await daemon.wait_cycles(3, timeout_s=300)
            consumer = AIOKafkaConsumer(f"lat{name}.tasks", bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", group_id=None)
            await consumer.start()
            try:
                ids = [t for t, v in sim.store.tasks.items() if str(v.get("status")) == "1"][:mutations]
                for n, tid in enumerate(ids):
                    sim.store.add_feedback(tid)
                    mutated[tid] = time.monotonic()
                    deadline = time.monotonic() + 0.37 + (n % 5) * 0.11
                    while time.monotonic() < deadline:
                        await _drain(consumer, arrived, 0.05)
                deadline = time.monotonic() + 30
                while set(mutated) - set(arrived) and time.monotonic() < deadline:
                    await _drain(consumer, arrived, 0.2)
            finally:
                await consumer.stop()
            sweep_pages = await daemon.metric("waiqin_poller_sweep_pages_per_cycle")
    finally:
        broker.stop()
        await sim.stop()
    latencies = sorted(arrived[t] - mutated[t] for t in mutated if t in arrived)
    p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
    return {"p50": statistics.median(latencies), "p95": p95, "missing": len(mutated) - len(latencies),
            "sweep_pages_per_cycle": sweep_pages}


async def _drain(consumer: Any, arrived: dict[str, float], timeout_s: float) -> None:
    batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
    now = time.monotonic()
    for batch in batches.values():
        for record in batch:
            arrived.setdefault(record.key.decode(), now)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-first-run":
        asyncio.run(_child_first_run(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--scaled", type=int, default=100_000)
    parser.add_argument("--skip-first-run", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poller-history-") as tmp:
        work = Path(tmp)
        figures: dict[str, Any] = {"projected": projected(args.tasks)}
        sweep = asyncio.run(scaled_sweep(args.scaled, work))
        scale = args.tasks / args.scaled
        figures["scaled_sweep"] = {**sweep, "per_day_scaled": figures["projected"]["window"]
                                   + sweep["requests"] * scale}
        figures["latency_off"] = asyncio.run(latency(work, sweep=False))
        figures["latency_on"] = asyncio.run(latency(work, sweep=True))
        if not args.skip_first_run:
            figures["first_run"] = first_run(args.tasks, work)
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
