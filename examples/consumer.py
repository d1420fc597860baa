"""A minimal waiqin-poller consumer: read the task topic, drop re-deliveries, act on events.

    python examples/consumer.py --bootstrap localhost:9092 --prefix waiqin365 --group my-service

It joins a consumer group, de-duplicates by the `ce_id` header (the poller delivers
at-least-once and re-sends the same ids after a crash or retry), decodes each record into the
published event models (`poller.events`) and commits offsets only after a batch is processed,
so a crash of this consumer re-delivers instead of losing events.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer

from poller import events

Emit = Callable[[str], None]
"""Where a handled event's line goes (print in the CLI, a list in tests)."""


class RecentIds:
    """The last `capacity` ce_ids seen: a bounded LRU, enough to absorb re-deliveries."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, ce_id: str) -> bool:
        """True if `ce_id` was seen before; otherwise remember it (evicting the oldest)."""
        if ce_id in self._ids:
            self._ids.move_to_end(ce_id)
            return True
        self._ids[ce_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


def describe(event: events.Event | events.DeadLetter) -> str:
    """What this example does with each event type: here, one line of text."""
    match event:
        case events.TaskAccepted():
            return f"accepted: task {event.task_id} ({event.task.task_content})"
        case events.TaskRejected():
            return f"rejected: task {event.task_id}, feedback needed again"
        case events.FeedbackAdded():
            return f"feedback on {event.task_id}: {event.feedback.feedback_content}"
        case events.TaskReassigned():
            names = ", ".join(r.name or r.id for r in event.added)
            return f"reassigned: task {event.task_id} to {names}"
        case events.TaskTypeChanged():
            return f"task type {event.type_id} changed: {sorted(event.changes)}"
        case events.DeadLetter():
            return f"dead letter: {event.reason}"
        case _:
            return f"{event.type}: task {event.task_id} (version {event.sequence})"


def process(records: Iterable[Any], recent: RecentIds, emit: Emit) -> int:
    """Handle each record once: skip ce_ids already seen, decode, dispatch on the event type.

    Returns how many records were handled (duplicates excluded). Works on consumed aiokafka
    records and on the poller's OutboundRecord alike.
    """
    handled = 0
    for record in records:
        ce_id = dict(record.headers).get("ce_id", b"").decode()
        if ce_id and recent.seen(ce_id):
            continue  # a re-delivery: same observation, same id
        emit(describe(events.decode(record)))
        handled += 1
    return handled


async def run(bootstrap: str, prefix: str, group: str, *, emit: Emit = print,
              stop: asyncio.Event | None = None, recent: RecentIds | None = None,
              options: Mapping[str, Any] | None = None) -> None:
    """Consume `{prefix}.tasks` in consumer group `group` until `stop` is set.

    `options` are passed to AIOKafkaConsumer as is (security settings, timeouts).
    """
    stop = stop or asyncio.Event()
    recent = recent or RecentIds()
    consumer = AIOKafkaConsumer(
        f"{prefix}.tasks", bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False,  # commit only what was processed
        auto_offset_reset="earliest",  # a new group starts from the oldest retained event
        **(options or {}),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                process(batch, recent, emit)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="waiqin365", help="POLLER_TOPIC_PREFIX of the poller")
    parser.add_argument("--group", default="waiqin-example", help="consumer group id")
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(args.bootstrap, args.prefix, args.group, stop=stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
