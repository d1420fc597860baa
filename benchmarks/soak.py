"""Soak with fault injection: churn, kills, broker outages, API faults, malformed records; then a ledger check.

Run: `python benchmarks/soak.py --cycles 200 --kills 20 --outages 5 [--interval 0.2] [--seed 1]`.

A daemon subprocess polls an in-process simulator that churns tasks. Meanwhile the harness
SIGKILLs or SIGTERMs and restarts the daemon, stops and restarts the (memory-only) broker, and
arms API faults and malformed records. A background consumer collects every record as it
arrives (re-subscribing from the start of each new broker incarnation; the harness drains it
before each outage). At the end, for every task the simulator mutated, the newest event of that
task must carry the simulator's final task; no event may name a task never mutated; duplicates
must share ce_id and payload; dead letters must be exactly the injected malformed records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poller import normalise
from poller.localbroker import TansuBroker
from poller.models import Task
from poller.simulator import Simulator
from poller.simulator.faults import Fault
from tests.fixtures.broker import consume
from tests.integration.harness import APPKEY, OPENID, Daemon, eventually

PREFIX = "soak"
TOPICS = (f"{PREFIX}.tasks", f"{PREFIX}.poller.dead-letter")
API_FAULTS = ("http_500", "http_429", "garbage", "latency", "malformed_record")


@dataclass
class Report:
    cycles: int = 0
    kills: int = 0
    terms: int = 0
    outages: int = 0
    faults: int = 0
    mutations: int = 0
    mutated_tasks: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"cycles={self.cycles} kills={self.kills} (SIGKILL {self.kills - self.terms}, "
                f"SIGTERM {self.terms}) outages={self.outages} api_faults={self.faults} "
                f"mutations={self.mutations} mutated_tasks={self.mutated_tasks} events={self.events} "
                f"duplicates={self.duplicates} dead_letters={self.dead_letters} lost={self.lost} "
                f"problems={len(self.problems)}")


class Collector:
    """A consumer kept running throughout; records keyed by (broker incarnation, partition, offset)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.records: dict[tuple[int, str, int, int], Any] = {}
        self.generation = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._resubscribe = asyncio.Event()
        self.errors: list[str] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resubscribe(self) -> None:
        """Read the new broker incarnation from its beginning."""
        self._resubscribe.set()

    async def _run(self) -> None:
        while True:
            self._resubscribe.clear()
            consumer = AIOKafkaConsumer(*TOPICS, bootstrap_servers=self.bootstrap, group_id=None,
                                        auto_offset_reset="earliest", metadata_max_age_ms=500,
                                        request_timeout_ms=3000)
            try:
                await consumer.start()
                self._consumer = consumer
                while not self._resubscribe.is_set():
                    batches = await consumer.getmany(timeout_ms=100)
                    for tp, batch in batches.items():
                        for r in batch:
                            self.records[(self.generation, tp.topic, tp.partition, r.offset)] = r
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down: try again shortly
                self.errors.append(repr(exc)[:200])
                await asyncio.sleep(0.2)  # retry pacing while the broker is away
            finally:
                self._consumer = None
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def sweep(self) -> None:
        """Read the current broker from its beginning with a fresh consumer and merge: whatever
        the background consumer has not fetched yet is collected before the broker goes away."""
        for topic in TOPICS:
            for r in await consume(self.bootstrap, topic, timeout_s=1.5):
                self.records[(self.generation, topic, r.partition, r.offset)] = r


class Soak:
    def __init__(self, work: Path, *, interval: float, seed: int, churn_per_s: float) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.interval = interval
        self.churn_per_s = churn_per_s
        self.sim = Simulator(OPENID, APPKEY, tasks=300, days=2, seed=seed)
        self.broker = TansuBroker(work)
        self.collector = Collector(self.broker.bootstrap)
        self.report = Report()
        self.malformed: list[Fault] = []
        self._last_metric = 0.0
        self.daemon: Daemon | None = None
        self.first_seq = 0
        self.initial: dict[str, dict[str, Any]] = {}

    async def progress(self) -> int:
        """Successful cycles over every daemon incarnation so far."""
        assert self.daemon is not None
        now = await self.daemon.successful_cycles()
        self.report.cycles += int(max(0.0, now - self._last_metric))
        self._last_metric = max(self._last_metric, now)
        return self.report.cycles

    async def wait_cycles(self, count: int, timeout_s: float = 60.0) -> None:
        target = await self.progress() + count

        async def reached() -> bool:
            return await self.progress() >= target
        await eventually(reached, timeout_s=timeout_s, interval_s=0.05,
                         what=f"{count} cycles\n{self.daemon.log()[-2000:] if self.daemon else ''}")

    def restart_daemon(self) -> None:
        assert self.daemon is not None
        if self.rng.random() < 0.5:
            self.daemon.kill()
        else:
            self.daemon.terminate()
            self.report.terms += 1
        self.report.kills += 1
        self._last_metric = 0.0  # the new process counts from zero
        self.daemon.start()

    async def outage(self) -> None:
        """Quiesce, drain the collector, stop the broker, churn while it is down, start it again."""
        await self.sim.stop_churn()
        await self.wait_cycles(2)
        await self.collector.sweep()
        self.broker.stop()
        await self.sim.start_churn(self.churn_per_s)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # the outage itself: a duration, not a sync
        self.collector.generation += 1
        self.broker.start()
        await create_topics(self.broker.bootstrap)
        self.collector.resubscribe()
        self.report.outages += 1

    def fault(self) -> None:
        kind = self.rng.choice(API_FAULTS)
        params: dict[str, Any] = {"latency": {"ms": 150}, "http_429": {"retry_after": 0}}.get(kind, {})
        fault = self.sim.faults.add(kind, self.rng.randint(1, 2), endpoint="queryTask", **params)
        if kind == "malformed_record":
            self.malformed.append(fault)
        self.report.faults += 1

    async def run(self, cycles: int, kills: int, outages: int) -> Report:
        await self.sim.start("127.0.0.1", 0)
        self.broker.start()
        self.daemon = Daemon.configured(
            base_url=self.sim.base_url, bootstrap=self.broker.bootstrap,
            store_url=f"sqlite:///{self.work / 'soak.db'}", prefix=PREFIX, log_dir=self.work,
            POLLER_POLL_INTERVAL=str(self.interval), POLLER_TOPIC_PARTITIONS="1", LOG_LEVEL="WARNING")
        try:
            self.daemon.start()
            await self.wait_cycles(2)  # the silent baseline: churn starts after it
            self.collector.start()  # after the daemon created the topics (one partition each)
            self.first_seq = len(self.sim.ledger)
            # A mutation can be a no-op (restore of a live task, the same status again): such a
            # task rightly has no event, and its final state must equal this one.
            self.initial = {tid: self._normalised(tid) for tid in self.sim.store.tasks}
            await self.sim.start_churn(self.churn_per_s)
            steps = max(kills + outages, 1) * 2
            per_step = max(1, cycles // steps)
            while (self.report.cycles < cycles or self.report.kills < kills
                   or self.report.outages < outages):
                await self.wait_cycles(per_step)
                roll = self.rng.random()
                if self.report.kills < kills and roll < 0.45:
                    self.restart_daemon()
                elif self.report.outages < outages and roll < 0.65:
                    await self.outage()
                else:
                    self.fault()
            await self.sim.stop_churn()
            self.sim.faults.clear()
            await self.wait_cycles(3)
            with contextlib.suppress(AssertionError):  # a timeout is reported by check() as lost
                await eventually(self._settled, timeout_s=60, what="every final state on the topic")
            self.check()
        finally:
            await self.collector.stop()
            self.daemon.__exit__()
            self.broker.stop()
            await self.sim.stop()
        return self.report

    async def _settled(self) -> bool:
        await self.collector.sweep()
        return not self._lost()

    def _final_tasks(self) -> dict[str, dict[str, Any]]:
        mutated = {e["task_id"] for e in self.sim.ledger[self.first_seq:] if e["task_id"]}
        return {tid: self._normalised(tid) for tid in mutated}

    def _normalised(self, tid: str) -> dict[str, Any]:
        task = normalise.task(self.sim.store.get(tid))
        return _comparable(normalise.to_task(task.document).model_dump(mode="json"))

    def _newest(self) -> dict[str, dict[str, Any]]:
        newest: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        for (gen, _topic, _, offset), record in self.records(TOPICS[0]):
            h = dict(record.headers)
            order = (int(h["ce_sequence"]), gen, offset)
            tid = h["ce_subject"].decode()
            if tid not in newest or order > newest[tid][0]:
                newest[tid] = (order, orjson.loads(record.value)["task"])
        return {tid: _comparable(Task.model_validate(task).model_dump(mode="json"))
                for tid, (_, task) in newest.items()}

    def records(self, topic: str) -> list[tuple[tuple[int, str, int, int], Any]]:
        return [(k, r) for k, r in list(self.collector.records.items()) if k[1] == topic]

    def _lost(self) -> list[str]:
        newest = self._newest()
        return [tid for tid, final in self._final_tasks().items()
                if newest.get(tid, self.initial.get(tid)) != final]

    def check(self) -> None:
        report, finals = self.report, self._final_tasks()
        report.mutations = len(self.sim.ledger) - self.first_seq
        report.mutated_tasks = len(finals)
        lost = self._lost()
        report.lost = len(lost)
        newest = self._newest()
        report.problems += [f"final state of {tid} not on the topic: sim {_delta(finals[tid], newest.get(tid))}"
                            for tid in lost[:20]]
        by_id: dict[str, set[bytes]] = defaultdict(set)
        count: dict[str, int] = defaultdict(int)
        for _, record in self.records(TOPICS[0]):
            h = dict(record.headers)
            by_id[h["ce_id"].decode()].add(record.value)
            count[h["ce_id"].decode()] += 1
            if h["ce_subject"].decode() not in finals:
                report.problems.append(f"event for a task never mutated: {h['ce_subject'].decode()}")
        report.events = len(count)
        report.duplicates = sum(n - 1 for n in count.values())
        report.problems += [f"ce_id {i} with different payloads" for i, v in by_id.items() if len(v) > 1]
        injected = [orjson.dumps(f.params["record"], option=orjson.OPT_SORT_KEYS)
                    for f in self.malformed if "record" in f.params]
        dead = {orjson.dumps(orjson.loads(r.value)["raw"], option=orjson.OPT_SORT_KEYS)
                for _, r in self.records(TOPICS[1])}
        report.dead_letters = len(self.records(TOPICS[1]))
        report.problems += [f"dead letter for a record never injected: {d[:80]!r}" for d in dead - set(injected)]
        report.problems += [f"injected malformed record not dead-lettered: {d[:80]!r}"
                            for d in set(injected) - dead]


async def create_topics(bootstrap: str) -> None:
    """One partition each, before any client's metadata request makes Tansu auto-create them
    with its own partition count (Tansu forgets its topics when it stops)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS])
    finally:
        await admin.close()


def _delta(final: dict[str, Any], seen: dict[str, Any] | None) -> str:
    if seen is None:
        return "no event at all"
    return str({k: (final.get(k), seen.get(k)) for k in set(final) | set(seen) if final.get(k) != seen.get(k)})


def _comparable(task: dict[str, Any]) -> dict[str, Any]:
    # modify_time alone is no event (DESIGN §4), so the newest event may carry an older one.
    return {k: v for k, v in task.items() if k != "modify_time"}


async def soak(cycles: int, kills: int, outages: int, *, interval: float = 0.2, seed: int = 1,
               churn_per_s: float = 8.0, work: Path | None = None) -> Report:
    if work is not None:
        return await Soak(work, interval=interval, seed=seed, churn_per_s=churn_per_s).run(cycles, kills, outages)
    with tempfile.TemporaryDirectory(prefix="poller-soak-") as tmp:
        return await Soak(Path(tmp), interval=interval, seed=seed, churn_per_s=churn_per_s).run(
            cycles, kills, outages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outages", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--churn", type=float, default=8.0, help="mutations per second")
    parser.add_argument("--work", type=Path, help="keep logs and the store here")
    args = parser.parse_args()
    started = time.monotonic()
    report = asyncio.run(soak(args.cycles, args.kills, args.outages, interval=args.interval,
                              seed=args.seed, churn_per_s=args.churn, work=args.work))
    print(report.line() + f" duration={time.monotonic() - started:.0f}s")
    for problem in report.problems[:30]:
        print("  problem:", problem)
    sys.exit(1 if report.lost or report.problems else 0)


if __name__ == "__main__":
    main()
