"""A waiqin-poller consumer on the poller.consumer library: act on each change once, in order.

    python examples/consumer.py --bootstrap localhost:9092 --group my-service
    python examples/consumer.py --bootstrap localhost:9092 --from-state

With `--group` it joins a consumer group on the task topic and commits offsets after each
processed batch (a crash re-delivers, never loses); the library skips re-deliveries (same
ce_id, or a ce_sequence already applied) and reports gaps. With `--from-state` it needs no
group: it reads the current state of every task from the compacted state topic, then follows
the task topic from where that state leaves off (a service that keeps a view restarts this way).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from poller import consumer, events
from poller.consumer import Delivery, TaskStream
from poller.errors import ConsumeError

Emit = Callable[[str], None]
"""Where a handled event's line goes (print in the CLI, a list in tests)."""


def describe(delivery: Delivery) -> str:
    """What this example does with each event: here, one line of text."""
    event, message = delivery.message.payload, delivery.message
    match event:
        case events.TaskAccepted():
            line = f"accepted: task {event.task_id} ({event.task.task_content})"
        case events.TaskRejected():
            line = f"rejected: task {event.task_id}, feedback needed again"
        case events.FeedbackAdded():
            line = f"feedback on {event.task_id}: {event.feedback.feedback_content}"
        case events.TaskReassigned():
            names = ", ".join(r.name or r.id for r in event.added)
            line = f"reassigned: task {event.task_id} to {names}"
        case events.TaskTypeChanged():
            line = f"task type {event.type_id} changed: {sorted(event.changes)}"
        case events.DeadLetter():
            line = f"dead letter: {event.reason}"
        case _:
            line = f"{message.ce_type}: task {message.task_id} (version {message.sequence})"
    if delivery.gap is not None:
        missing = delivery.gap.missing
        line += f"  [gap: versions {missing.start}..{missing.stop - 1} never arrived]"
    return line


async def run_group(bootstrap: str, prefix: str, group: str, *, emit: Emit = print,
                    stop: asyncio.Event | None = None,
                    options: Mapping[str, Any] | None = None) -> TaskStream:
    """Consume `{prefix}.tasks` in consumer group `group` until `stop` is set.

    `options` are passed to AIOKafkaConsumer as is (security settings, timeouts). Returns the
    stream, whose counts say what was skipped and which gaps were seen.
    """
    stop = stop or asyncio.Event()
    stream = TaskStream()
    tasks_topic, _ = consumer.topics(prefix)
    reader = AIOKafkaConsumer(
        tasks_topic, bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False,  # commit only what was processed
        auto_offset_reset="earliest",  # a new group starts from the oldest retained event
        **(options or {}),
    )
    try:
        await reader.start()
        while not stop.is_set():
            batches = await reader.getmany(timeout_ms=500)
            for batch in batches.values():
                for delivery in stream.deliveries(batch):
                    emit(describe(delivery))
            if batches:
                await reader.commit()
    finally:
        await reader.stop()
    return stream


async def run_from_state(bootstrap: str, prefix: str, *, emit: Emit = print,
                         stop: asyncio.Event | None = None,
                         options: Mapping[str, Any] | None = None) -> consumer.Bootstrap:
    """Read the state topic, then follow `{prefix}.tasks` until `stop` is set (no group)."""
    stop = stop or asyncio.Event()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                              enable_auto_commit=False, **(options or {}))
    try:
        await reader.start()
        boot = await consumer.bootstrap(reader, prefix=prefix)
        emit(f"current state: {len(boot.view.tasks())} tasks "
             f"({boot.state_records} state records read)")
        async for batch in consumer.follow(reader, boot):
            for delivery in batch:
                emit(describe(delivery))
            if stop.is_set():
                break
    finally:
        await reader.stop()
    return boot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="waiqin365", help="POLLER_TOPIC_PREFIX of the poller")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--group", default="waiqin-example", help="consumer group id")
    mode.add_argument("--from-state", action="store_true",
                      help="start from the state topic instead of a consumer group")
    args = parser.parse_args(argv)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.from_state:
            await run_from_state(args.bootstrap, args.prefix, stop=stop)
        else:
            await run_group(args.bootstrap, args.prefix, args.group, stop=stop)

    try:
        asyncio.run(serve())
    except (ConsumeError, KafkaError) as exc:  # expected conditions: one line, no traceback
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
