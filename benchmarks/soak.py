"""Soak with fault injection: churn with reverts, kills, broker and store outages, API faults, malformed records.

Run: `python benchmarks/soak.py --cycles 200 --kills 20 --outages 5 --store-outages 5
[--store sqlite|postgresql] [--interval 0.2] [--seed 1]`.

A daemon subprocess polls an in-process simulator that churns tasks (reverting changes A->B->A
too). Meanwhile the harness SIGKILLs or SIGTERMs and restarts the daemon, stops and restarts
the (memory-only) broker, takes the store away for a while (SQLite made immutable, PostgreSQL
refusing connections with the daemon's sessions terminated) and arms API faults and malformed
records. A background consumer collects every record as it arrives (re-subscribing from the
start of each new broker incarnation; the harness sweeps the broker to its end offsets before
each broker outage). At the end the collected stream is judged (benchmarks/soak_judge.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.soak_collector import Collector
from benchmarks.soak_judge import Truth, Verdict, judge
from benchmarks.soak_stores import STORES, SoakStore, store_for
from poller.localbroker import TansuBroker
from poller.publish import TOPIC_CONFIGS
from poller.simulator import Simulator
from poller.simulator.churn import ChurnMix
from poller.simulator.faults import Fault
from tests.consumer_model import expected
from tests.integration.harness import APPKEY, OPENID, Daemon, eventually

PREFIX = "soak"
EVENTS, STATES, DEAD = f"{PREFIX}.tasks", f"{PREFIX}.tasks.state", f"{PREFIX}.poller.dead-letter"
TOPICS = (EVENTS, STATES, DEAD)
API_FAULTS = ("http_500", "http_429", "garbage", "latency", "malformed_record")


@dataclass(frozen=True)
class Options:
    """What one soak does; the defaults are the full run."""

    cycles: int = 200
    kills: int = 20
    outages: int = 5  # broker outages
    store_outages: int = 5
    store: str = "sqlite"
    interval: float = 0.2
    seed: int = 1
    churn_per_s: float = 8.0
    # Reverts only: silent and past-stamped changes are found by the reconciliation sweep
    # alone (not built yet), so with them the ledger could not expect every final state.
    revert: float = 0.25


@dataclass
class Report:
    store: str = ""
    cycles: int = 0
    kills: int = 0
    terms: int = 0
    outages: int = 0
    store_outages: int = 0
    faults: int = 0
    mutations: int = 0
    reverts: int = 0
    mutated_tasks: int = 0
    verdict: Verdict = field(default_factory=Verdict)
    grace_exceeded: int = 0  # SIGTERMs whose in-flight cycle outlived the shutdown grace
    along_the_way: list[str] = field(default_factory=list)  # e.g. a SIGTERM that did not exit 0

    @property
    def lost(self) -> int:
        return len(self.verdict.lost)

    @property
    def contradictions(self) -> int:
        return len(self.verdict.contradictions)

    @property
    def problems(self) -> list[str]:
        """Everything that is wrong, lost and contradictions included."""
        v = self.verdict
        return v.lost + v.contradictions + v.state_wrong + v.problems + self.along_the_way

    def line(self) -> str:
        v = self.verdict
        return (f"store={self.store} cycles={self.cycles} kills={self.kills} (SIGKILL "
                f"{self.kills - self.terms}, SIGTERM {self.terms}, grace exceeded {self.grace_exceeded}) "
                f"broker_outages={self.outages} store_outages={self.store_outages} api_faults={self.faults} "
                f"mutations={self.mutations} reverts={self.reverts} mutated_tasks={self.mutated_tasks} "
                f"events={v.events} duplicates={v.duplicates} state_records={v.state_records} "
                f"dead_letters={v.dead_letters} lost={self.lost} contradictions={self.contradictions} "
                f"state_wrong={len(v.state_wrong)} problems={len(self.problems)}")


def schedule(rng: random.Random, options: Options) -> list[str]:
    """The faults in a random order, with as many API faults as all the others together."""
    steps = ["kill"] * options.kills + ["broker"] * options.outages + ["store"] * options.store_outages
    steps += ["api"] * max(len(steps), 1)
    rng.shuffle(steps)
    return steps


class Soak:
    def __init__(self, work: Path, options: Options) -> None:
        self.work = work
        self.options = options
        self.rng = random.Random(options.seed)
        self.sim = Simulator(OPENID, APPKEY, tasks=300, days=2, seed=options.seed)
        self.mix = ChurnMix(revert=options.revert)
        self.broker = TansuBroker(work)
        self.store: SoakStore = store_for(options.store, work)
        self.collector = Collector(self.broker.bootstrap, TOPICS)
        self.report = Report(store=options.store)
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

    async def churn(self) -> None:
        await self.sim.start_churn(self.options.churn_per_s, self.mix)

    async def restart_daemon(self) -> None:
        assert self.daemon is not None
        if self.rng.random() < 0.5:
            self.daemon.kill()
        else:
            # In a thread: the simulator shares this event loop and must answer the daemon's
            # in-flight request, or the daemon's graceful stop waits out its grace period.
            code = await asyncio.to_thread(self.daemon.terminate)
            if code != 0:
                self.report.along_the_way.append(f"the daemon exited {code} on SIGTERM")
            self.report.terms += 1
        self.report.kills += 1
        self._last_metric = 0.0  # the new process counts from zero
        self.daemon.start()

    async def broker_outage(self) -> None:
        """Quiesce, sweep the broker to its end, stop it, churn while it is down, start it again."""
        await self.sim.stop_churn()
        await self.wait_cycles(2)  # two successful cycles: the outbox is empty, all is on the broker
        await self.collector.sweep()
        self.broker.stop()
        await self.churn()
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # the outage itself: a duration, not a sync
        self.collector.generation += 1
        self.broker.start()
        await create_topics(self.broker.bootstrap)
        self.collector.resubscribe()
        self.report.outages += 1

    async def store_outage(self) -> None:
        """Take the store away while churn goes on, until the daemon has failed a cycle on it
        and a while longer; then give it back (the next steps wait for successful cycles)."""
        assert self.daemon is not None
        daemon = self.daemon
        before = await daemon.metric("waiqin_poller_cycles_total", 'outcome="failure"')

        async def failed() -> bool:
            return await daemon.metric("waiqin_poller_cycles_total", 'outcome="failure"') > before
        async with self.store.outage():
            await eventually(failed, timeout_s=30, what=f"a failed cycle during the {self.store.name} outage")
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # the outage itself: a duration, not a sync
        self.report.store_outages += 1

    def api_fault(self) -> None:
        kind = self.rng.choice(API_FAULTS)
        params: dict[str, Any] = {"latency": {"ms": 150}, "http_429": {"retry_after": 0}}.get(kind, {})
        fault = self.sim.faults.add(kind, self.rng.randint(1, 2), endpoint="queryTask", **params)
        if kind == "malformed_record":
            self.malformed.append(fault)
        self.report.faults += 1

    async def step(self, kind: str) -> None:
        if kind == "kill":
            await self.restart_daemon()
        elif kind == "broker":
            await self.broker_outage()
        elif kind == "store":
            await self.store_outage()
        else:
            self.api_fault()

    async def run(self) -> Report:
        await self.store.create()
        try:
            await self.sim.start("127.0.0.1", 0)
            self.broker.start()
            self.daemon = Daemon.configured(
                base_url=self.sim.base_url, bootstrap=self.broker.bootstrap, store_url=self.store.url,
                prefix=PREFIX, log_dir=self.work, POLLER_POLL_INTERVAL=str(self.options.interval),
                POLLER_TOPIC_PARTITIONS="1", LOG_LEVEL="WARNING")
            self.daemon.start()
            await self.soak()
        finally:
            await self.collector.stop()
            if self.daemon is not None:
                await asyncio.to_thread(self.daemon.__exit__)
            self.broker.stop()
            await self.sim.stop()
            await self.store.drop()
        return self.report

    async def soak(self) -> None:
        await self.wait_cycles(2)  # the silent baseline: churn starts after it
        self.collector.start()  # after the daemon created the topics (one partition each)
        self.first_seq = len(self.sim.ledger)
        # A mutation can be a no-op (restore of a live task, a revert within one cycle): such a
        # task rightly has no event, and its final state must equal this one.
        self.initial = {tid: expected(raw) for tid, raw in self.sim.store.tasks.items()}
        await self.churn()
        steps = schedule(self.rng, self.options)
        per_step = max(1, self.options.cycles // len(steps))
        for kind in steps:
            await self.wait_cycles(per_step)
            await self.step(kind)
        while self.report.cycles < self.options.cycles:
            await self.wait_cycles(per_step)
        await self.sim.stop_churn()
        self.sim.faults.clear()
        await self.wait_cycles(3)
        with contextlib.suppress(AssertionError):  # a timeout shows in the verdict
            await eventually(self._settled, timeout_s=60, what="every final state on the topic")
        self.report.verdict = self._judge()
        ledger = self.sim.ledger[self.first_seq:]
        self.report.mutations = len(ledger)
        self.report.reverts = sum(1 for e in ledger if e["kind"] == "revert")
        self.report.mutated_tasks = len(self._truth().finals)
        self.report.grace_exceeded = self.daemon.log().count('"event":"shutdown_grace_exceeded"') if self.daemon else 0

    async def _settled(self) -> bool:
        await self.collector.sweep()
        verdict = self._judge()
        return not (verdict.lost or verdict.state_wrong)

    def _judge(self) -> Verdict:
        return judge([r for _, r in self.collector.delivered(EVENTS)],
                     [r for _, r in self.collector.delivered(STATES)],
                     [r for _, r in self.collector.delivered(DEAD)], self._truth())

    def _truth(self) -> Truth:
        mutated = {e["task_id"] for e in self.sim.ledger[self.first_seq:] if e["task_id"]}
        injected = frozenset(orjson.dumps(f.params["record"], option=orjson.OPT_SORT_KEYS)
                             for f in self.malformed if "record" in f.params)
        return Truth(finals={tid: expected(self.sim.store.get(tid)) for tid in mutated},
                     initial=self.initial, injected=injected)



async def create_topics(bootstrap: str) -> None:
    """One partition each (the state topic compacted, as the daemon makes it), before any
    client's metadata request makes Tansu auto-create them with its own partition count (Tansu
    forgets its topics when it stops)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1, topic_configs=TOPIC_CONFIGS.get(t.removeprefix(PREFIX), {}))
                                   for t in TOPICS])
    finally:
        await admin.close()


async def soak(options: Options, work: Path | None = None) -> Report:
    """Run one soak; `work` keeps the logs (and an SQLite store), else a temporary directory."""
    if work is not None:
        return await Soak(work, options).run()
    with tempfile.TemporaryDirectory(prefix="poller-soak-") as tmp:
        return await Soak(Path(tmp), options).run()


def main() -> None:
    defaults = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=defaults.cycles)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--outages", type=int, default=defaults.outages, help="broker outages")
    parser.add_argument("--store-outages", type=int, default=defaults.store_outages)
    parser.add_argument("--store", choices=STORES, default=defaults.store)
    parser.add_argument("--interval", type=float, default=defaults.interval)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--churn", type=float, default=defaults.churn_per_s, help="mutations per second")
    parser.add_argument("--revert", type=float, default=defaults.revert, help="share of churn that reverts")
    parser.add_argument("--work", type=Path, help="keep logs and the store here")
    args = parser.parse_args()
    # The collector's consumer complains through every broker outage; that is the point of them.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    options = dataclasses.replace(
        defaults, cycles=args.cycles, kills=args.kills, outages=args.outages, store_outages=args.store_outages,
        store=args.store, interval=args.interval, seed=args.seed, churn_per_s=args.churn, revert=args.revert)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = asyncio.run(soak(options, args.work))
    print(report.line() + f" duration={time.monotonic() - started:.0f}s")
    for problem in report.problems[:30]:
        print("  problem:", problem)
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
