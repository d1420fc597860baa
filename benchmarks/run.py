"""The benchmark suite: one command, one table, every figure against a baseline of the same run.

Run: `python benchmarks/run.py [--quick] [--million]` from a clone with the project installed.

- unchanged: the best steady-state scan of a whole window of 20,000 and of 50,000 tasks over
  HTTP (every task already in an SQLite store), for a tidy API (every scan the same bytes) and
  for one that renders every response anew (the simulator's drift), per poller CPU-second and
  per wall-clock second, vs the floor: orjson parse + canonical dump (OPT_SORT_KEYS) +
  xxh3_128 of the very same response bytes. The responses are recorded from the simulator and
  replayed by benchmarks/replay.py in its own process, so neither figure includes rendering;
- economy: queryTask requests of that scan vs ceil(window tasks / rows);
- changed path: events/s of scans in which every task changed, through the page shell (plan,
  one SQLite commit of snapshots and outbox rows per page, KafkaPublisher acks=all to a local
  Tansu, mark sent) vs a bare aiokafka producer sending as many encoded events;
- memory: peak RSS of a subprocess scanning 100,000 tasks with 10k/100k(/1M) already stored,
  vs the same process's RSS before the scan;
- latency: simulator mutation -> event consumed from the topic, daemon subprocess with
  POLLER_POLL_INTERVAL=1, p50/p95 vs the interval.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    ROOT,
    in_process_poller,
    settings,
    simulator_process,
    wait_port,
)
from poller import wire
from poller.fetch import JSON_CONTENT_TYPE, QUERY_TASK, Page, WaiqinClient
from poller.localbroker import free_port
from poller.models import Window
from poller.pages import ReadMode

ROWS = 1000


# --- unchanged path and API economy ----------------------------------------------------------

async def raw_pages(client: WaiqinClient, base_url: str) -> list[bytes]:
    """The response bodies of one whole-window scan, as served."""
    bodies: list[bytes] = []
    session = client._session
    assert session is not None
    for number in range(1, 10**6):
        body = orjson.dumps(Window().body(number, ROWS))
        async with session.post(base_url + client._signed_path(QUERY_TASK, body), data=body,
                                headers={"Content-Type": JSON_CONTENT_TYPE}) as resp:
            raw = await resp.read()
        bodies.append(raw)
        if len(_records(raw)) < ROWS:
            return bodies
    raise AssertionError("unreachable")


def _records(raw: bytes) -> list[Any]:
    data = orjson.loads(raw)["response_data"]
    # Waiqin365 quirk (and the simulator's default): response_data may be a string of JSON.
    return orjson.loads(data) if isinstance(data, str) else data  # type: ignore[no-any-return]


def floor(bodies: list[bytes]) -> int:
    count = 0
    for raw in bodies:
        for record in _records(raw):
            xxhash.xxh3_128_hexdigest(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
            count += 1
    return count


async def record_scans(tasks: int, scans: int, work: Path, *, drift: bool) -> list[list[bytes]]:
    """`scans` whole-window scans of a simulator with `tasks` tasks, as served (with drift,
    each one rendered anew)."""
    sim, base_url = simulator_process(tasks, 3, work / "sim.log", drift=drift)
    client = WaiqinClient(settings(base_url, "sqlite:///unused").waiqin)
    await client.start()
    try:
        return [await raw_pages(client, base_url) for _ in range(scans)]
    finally:
        await client.stop()
        sim.terminate()
        sim.wait(10)


def replay_process(scans: list[list[bytes]], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """benchmarks/replay.py serving `scans` round robin, in its own process."""
    path = work / "scans.pickle"
    path.write_bytes(pickle.dumps(scans))
    port = free_port()
    with (work / "replay.log").open("ab") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "replay.py"), str(port), str(path)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    wait_port(port, process)
    return process, f"http://127.0.0.1:{port}"


async def bench_unchanged(tasks: int, work: Path, rounds: int, *, drift: bool) -> dict[str, Any]:
    """Steady-state scans of an unchanged window over HTTP against the floor of the same bytes.

    The responses are recorded from the simulator first and replayed by a process of their
    own, so neither the poller's CPU nor its wall clock includes rendering them. With drift,
    every scan (the baseline's included) is a rendering of its own.
    """
    scans = await record_scans(tasks, 1 + rounds if drift else 1, work, drift=drift)
    server, base_url = replay_process(scans, work)
    try:
        cfg = settings(base_url, f"sqlite:///{work / f'unchanged-{tasks}-{drift}.db'}")
        poller, client, store, lease = await in_process_poller(cfg)
        try:
            baseline = await poller.pages.scan(Window(), lease, mode=ReadMode(silent_new=True))
            assert baseline.tasks >= tasks
            ours: list[float] = []
            cpu: list[float] = []
            requests: list[int] = []
            for _ in range(rounds):
                before = client.requests[QUERY_TASK]
                gc.collect()
                started, started_cpu = time.perf_counter(), time.process_time()
                stats = await poller.pages.scan(Window(), lease)
                ours.append(stats.tasks / (time.perf_counter() - started))
                cpu.append(stats.tasks / (time.process_time() - started_cpu))
                requests.append(client.requests[QUERY_TASK] - before)
                assert stats.events == 0, f"unchanged scan emitted {stats.events} events"
            started = time.perf_counter()
            await raw_pages(client, base_url)
            fetch_only = baseline.tasks / (time.perf_counter() - started)
            floors: list[float] = []
            floors_wall: list[float] = []
            for _ in range(rounds):
                gc.collect()
                started, started_cpu = time.perf_counter(), time.process_time()
                count = floor(scans[-1])
                floors_wall.append(count / (time.perf_counter() - started))
                floors.append(count / (time.process_time() - started_cpu))
        finally:
            await client.stop()
            await store.stop()
    finally:
        server.terminate()
        server.wait(10)
    window_tasks = baseline.tasks
    return {"ours": max(ours), "cpu": max(cpu), "fetch_only": fetch_only, "floor": max(floors),
            "floor_wall": max(floors_wall), "pages": max(requests),
            "min_pages": math.ceil(window_tasks / ROWS), "window_tasks": window_tasks}


def unchanged_rows(u: dict[str, Any], label: str, target: float) -> list[tuple[str, str, str, str, str]]:
    """The table rows of one unchanged-path run: CPU (the daemon's cost) first, then wall."""
    cpu_ratio = u["cpu"] / u["floor"]
    wall_ratio = u["ours"] / u["floor_wall"]
    return [
        (f"unchanged, {u['window_tasks']:,} tasks, {label}: per poller CPU-second",
         f"{u['cpu']:,.0f} tasks/s", f"floor {u['floor']:,.0f} tasks/s", f"{cpu_ratio:.2f}x",
         f">={target}x: {verdict(cpu_ratio >= target)}"),
        ("  same, wall clock over HTTP", f"{u['ours']:,.0f} tasks/s",
         f"floor {u['floor_wall']:,.0f} tasks/s (HTTP fetch alone {u['fetch_only']:,.0f})",
         f"{wall_ratio:.2f}x", f">={target}x: {verdict(wall_ratio >= target)}"),
        (f"  API economy ({label})", f"{u['pages']} pages",
         f"min ceil({u['window_tasks']}/{ROWS}) = {u['min_pages']}",
         f"{u['pages'] / u['min_pages']:.2f}x", "=min (+1 if exact multiple)"),
    ]


# --- changed path: the page shell with the outbox, and publishing -------------------------------

class ChangedSource:
    """An in-process API whose scans alternate between two renderings of every task, each
    page arriving as bytes like the client's: every task changes on every scan."""

    def __init__(self, tasks: int) -> None:
        from benchmarks.bench_diff import responses

        self.requests: dict[str, int] = {}
        self._scans = [[_response_data(body) for body in scan] for scan in responses(tasks, 3)]
        self._next = 0

    async def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                         max_pages: int | None = None) -> AsyncIterator[Page]:
        scan = self._scans[self._next % 2]
        self._next += 1
        for number, data in enumerate(scan, 1):
            records = wire.split(QUERY_TASK, data)
            assert records is not None
            yield Page(window, number, records, is_last=number == len(scan))

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        return []


def _response_data(body: bytes) -> str:
    """A page's records as a JSON string, the way Waiqin365 sends response_data."""
    return orjson.dumps(orjson.loads(body)["response_data"]).decode()


class Phases:
    """Wall-clock seconds spent in each step of the page shell (wraps the instances' methods)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, method: str, name: str) -> None:
        inner = getattr(owner, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        setattr(owner, method, timed)


async def bench_changed(tasks: int, work: Path, *, compression: str = "gzip") -> dict[str, Any]:
    """Events/s of scans in which every task changed, through the page shell (plan, SQLite
    commit of snapshots and outbox rows, KafkaPublisher acks=all to Tansu, mark sent), with the
    time per page of each step; and through a bare aiokafka producer (same compression)."""
    from aiokafka import AIOKafkaProducer

    from poller.localbroker import TansuBroker
    from poller.publish import KafkaPublisher

    source = ChangedSource(tasks)
    broker = TansuBroker(work)
    broker.start()
    try:
        cfg = settings("http://127.0.0.1:1", f"sqlite:///{work / f'changed-{compression}.db'}",
                       broker.bootstrap, POLLER_TOPIC_PREFIX="benchchg", KAFKA_COMPRESSION_TYPE=compression)
        publisher = KafkaPublisher(cfg.kafka, cfg.topics)
        poller, client, store, lease = await in_process_poller(cfg, publisher=publisher, source=source)
        try:
            await poller.pages.scan(Window(), lease, mode=ReadMode(silent_new=True))
            best, sent, pages, phases = 0.0, 0, 1, Phases()
            for _ in range(2):
                gc.collect()
                round_phases = Phases()
                for owner, method in ((store, "read_hashes"), (store, "read_snapshots"),
                                      (store, "commit"), (publisher, "publish"), (store, "mark_sent")):
                    round_phases.wrap(owner, method, method)
                started = time.perf_counter()
                stats = await poller.pages.scan(Window(), lease)
                elapsed = time.perf_counter() - started
                for owner, method in ((store, "read_hashes"), (store, "read_snapshots"),
                                      (store, "commit"), (publisher, "publish"), (store, "mark_sent")):
                    delattr(owner, method)  # back to the class's method
                assert stats.changed == stats.tasks, "every task changes on every scan"
                assert await store.outbox_depth() == 0
                if stats.events / elapsed > best:
                    best, sent, pages, phases = stats.events / elapsed, stats.events, stats.pages, round_phases
                    phases.seconds["total"] = elapsed
        finally:
            await client.stop()
            await publisher.stop()
            await store.stop()
        records = encoded_events(sent)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False,
                                    linger_ms=20, compression_type=None if compression == "none" else compression)
        await producer.start()
        try:
            name = "benchbare.tasks"
            await producer.send_and_wait(name, value=records[0].value, key=records[0].key)
            started = time.perf_counter()
            for offset in range(0, len(records), ROWS):
                futures = [await producer.send(name, value=r.value, key=r.key, headers=list(r.headers))
                           for r in records[offset:offset + ROWS]]
                await asyncio.gather(*futures)
            bare = len(records) / (time.perf_counter() - started)
        finally:
            await producer.stop()
    finally:
        broker.stop()
    per_page = {name: 1000 * seconds / pages for name, seconds in phases.seconds.items()}
    per_page["plan (the rest)"] = per_page["total"] - sum(v for k, v in per_page.items() if k != "total")
    return {"ours": best, "bare": bare, "events": sent, "tasks": tasks, "per_page_ms": per_page,
            "compression": compression}


def changed_rows(c: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    phases = ", ".join(f"{name} {ms:.0f}" for name, ms in c["per_page_ms"].items() if name != "total")
    return [
        (f"changed path: page shell + outbox, acks=all, {c['compression']} ({c['tasks']:,} tasks changed)",
         f"{c['ours']:,.0f} events/s", f"bare aiokafka {c['bare']:,.0f}/s", f"{c['ours'] / c['bare']:.2f}x",
         f">=10k/s: {verdict(c['ours'] >= 10_000)}"),
        ("  same, ms per page of 1000 tasks", f"{c['per_page_ms']['total']:.0f} ms", phases, "", "context"),
    ]


def encoded_events(count: int) -> list[Any]:
    import random

    from benchmarks.bench_diff import OBSERVED_AT, record
    from poller import diff, events, normalise

    rng = random.Random(3)
    out: list[Any] = []
    i = 0
    while len(out) < count:
        observation = diff.observe(None, normalise.task(record(i, rng)), observed_at=OBSERVED_AT)
        out.extend(events.encode(e, source="bench") for e in observation.events)
        i += 1
    return out[:count]


# --- memory ------------------------------------------------------------------------------------

def bench_memory(stored: list[int], scan: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for count in stored:
        db = work / f"mem-{count}.db"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memscan.py"), "prefill",
                        str(db), str(count)], check=True, cwd=ROOT)
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memscan.py"), "scan",
                              str(db), str(scan)], check=True, cwd=ROOT, capture_output=True)
        rows.append({"stored": count, **orjson.loads(out.stdout.splitlines()[-1])})
    return rows


# --- latency -----------------------------------------------------------------------------------

async def bench_latency(mutations: int, work: Path, interval: float = 1.0) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    from poller.localbroker import TansuBroker
    from poller.simulator import Simulator
    from tests.integration.harness import OPENID, Daemon

    sim = Simulator(OPENID, "it-appkey-秘密", tasks=300, days=2, seed=5)
    await sim.start("127.0.0.1", 0)
    broker = TansuBroker(work)
    broker.start()
    arrived: dict[str, float] = {}
    try:
        daemon = Daemon.configured(base_url=sim.base_url, bootstrap=broker.bootstrap,
                                   store_url=f"sqlite:///{work / 'lat.db'}", prefix="benchlat",
                                   log_dir=work, POLLER_POLL_INTERVAL=str(interval),
                                   POLLER_TOPIC_PARTITIONS="1", LOG_LEVEL="WARNING")
        with daemon:
            await daemon.wait_cycles(2, timeout_s=60)
            consumer = AIOKafkaConsumer("benchlat.tasks", bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", group_id=None)
            await consumer.start()
            try:
                ids = [t for t, v in sim.store.tasks.items() if str(v.get("status")) == "1"][:mutations]
                mutated: dict[str, float] = {}
                for n, tid in enumerate(ids):
                    sim.store.add_feedback(tid)
                    mutated[tid] = time.monotonic()
                    deadline = time.monotonic() + 0.37 + (n % 5) * 0.11  # spread over the interval
                    while time.monotonic() < deadline:
                        await _drain(consumer, arrived, 0.05)
                deadline = time.monotonic() + 30
                while set(mutated) - set(arrived) and time.monotonic() < deadline:
                    await _drain(consumer, arrived, 0.2)
            finally:
                await consumer.stop()
    finally:
        broker.stop()
        await sim.stop()
    latencies = sorted(arrived[t] - mutated[t] for t in mutated if t in arrived)
    missing = len(mutated) - len(latencies)
    p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
    return {"p50": statistics.median(latencies), "p95": p95, "interval": interval,
            "missing": missing, "count": len(latencies)}


async def _drain(consumer: Any, arrived: dict[str, float], timeout_s: float) -> None:
    batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
    now = time.monotonic()
    for batch in batches.values():
        for record in batch:
            arrived.setdefault(record.key.decode(), now)


# --- the table ---------------------------------------------------------------------------------

def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("figure", "measured", "baseline (same run)", "ratio", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (CI, laptops)")
    parser.add_argument("--million", action="store_true", help="also 1M stored tasks (slow)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="poller-bench-") as tmp:
        work = Path(tmp)
        for tasks in (5_000,) if args.quick else (20_000, 50_000):
            for drift, label, target in ((False, "tidy API (same bytes)", 0.9),
                                         (True, "every response re-rendered", 0.5)):
                u = await bench_unchanged(tasks, work, rounds=3 if args.quick else 4, drift=drift)
                rows.extend(unchanged_rows(u, label, target))
        for compression in ("gzip", "none"):  # gzip: KAFKA_COMPRESSION_TYPE's default
            rows.extend(changed_rows(await bench_changed(5_000 if args.quick else 20_000, work,
                                                         compression=compression)))
        stored = [10_000, 100_000] + ([1_000_000] if args.million and not args.quick else [])
        mem = bench_memory(stored, 20_000 if args.quick else 100_000, work)
        for m in mem:
            rows.append((f"peak RSS, {m['scanned']:,} scanned, {m['stored']:,} stored",
                         f"{m['peak_mb']:.0f} MB", f"before scan {m['start_mb']:.0f} MB",
                         f"+{m['peak_mb'] - m['start_mb']:.0f} MB", f"<=150MB: {verdict(m['peak_mb'] <= 150)}"))
        growth = mem[-1]["peak_mb"] - mem[0]["peak_mb"]
        rows.append((f"RSS growth {mem[0]['stored']:,} -> {mem[-1]['stored']:,} stored", f"{growth:+.0f} MB",
                     f"{mem[0]['peak_mb']:.0f} MB", "", f"<=30MB: {verdict(growth <= 30)}"))
        lat = await bench_latency(10 if args.quick else 20, work)
        rows.append((f"latency mutation->event ({lat['count']} mutations, {lat['missing']} missing)",
                     f"p50 {lat['p50']:.2f}s p95 {lat['p95']:.2f}s", f"interval {lat['interval']:.1f}s",
                     f"p95 = interval+{lat['p95'] - lat['interval']:.2f}s",
                     f"p95<=interval+1s: {verdict(lat['p95'] <= lat['interval'] + 1 and not lat['missing'])}"))
    print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
