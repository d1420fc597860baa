"""The `waiqin-poller` command: parse arguments, configure logs, run; the only sys.exit."""

from __future__ import annotations

import asyncio
import difflib
import sys
from collections.abc import Mapping
from datetime import date
from typing import Any

import click

from poller import __version__, logs
from poller.config import Settings
from poller.errors import ConfigError, PollerError
from poller.redact import Redactor

# Exit codes: 0 clean stop, 1 a check or command failed, 2 bad configuration or arguments.
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C
# Stand-ins for the credentials of commands that never call the API (tail, simulator): not
# secrets, so the redactor must leave them alone (a "-" masked in every timestamp otherwise).
NO_API_CREDENTIALS = {"WAIQIN_OPENID": "not-used", "WAIQIN_APPKEY": "not-used"}
# Human-facing commands log for a person at a terminal unless LOG_FORMAT says otherwise.
HUMAN_LOGS = {"LOG_FORMAT": "console"}


def load_settings(*, human: bool, defaults: Mapping[str, str] | None = None,
                  placeholders: Mapping[str, str] | None = None) -> tuple[Settings, Redactor]:
    """Settings from the environment and the Redactor built from them, with logs configured.

    `defaults` fill unset variables; `placeholders` are defaults that stand in for values the
    command does not use (they are not secrets). The daemon (`human=False`) logs JSON to stdout;
    human-facing commands log to stderr, in console format unless LOG_FORMAT is set. A bad
    setting exits 2 with one line naming it.
    """
    filled = {**(HUMAN_LOGS if human else {}), **(placeholders or {}), **(defaults or {})}
    try:
        settings = Settings.load(defaults=filled)
    except ConfigError as exc:
        click.echo(f"waiqin-poller: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    redactor = Redactor.from_settings(settings, placeholders=(placeholders or {}).values())
    logs.configure(settings.log, redactor=redactor, stream=logs.current_stderr() if human else None)
    for name in settings.unknown_variables():
        click.echo(f"waiqin-poller: warning: {name} is not a setting (typo?); ignored", err=True)
    return settings, redactor


def _run(coro: Any, redactor: Redactor, settings: Settings | None = None) -> Any:
    """Run `coro`; an expected failure ends in one line (no traceback) and exit code 1."""
    from poller.commands import hints

    try:
        return asyncio.run(coro)
    except PollerError as exc:
        line = f"waiqin-poller: {type(exc).__name__}: {exc}"
        hint = hints.for_error(exc, settings)
        click.echo(redactor.text(line + (f"\n  hint: {hint}" if hint else "")), err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


@click.group()
@click.version_option(__version__, prog_name="waiqin-poller")
def main() -> None:
    """Waiqin365 customer tasks as a Kafka event stream."""


@main.command()
def run() -> None:
    """Run the daemon (configured by the environment; see the README)."""
    from poller import app

    settings, redactor = load_settings(human=False)
    _run(app.run(settings, redactor=redactor), redactor, settings)


@main.command()
def check() -> None:
    """Validate the configuration and reach the API, the store and Kafka, failing fast."""
    from poller.commands import check as checks

    # Quiet unless asked: every problem is already one of check's own lines.
    settings, redactor = load_settings(human=True, defaults={"LOG_LEVEL": "ERROR"})
    ok = _run(checks.run(settings, redactor), redactor, settings)
    sys.exit(0 if ok else EXIT_FAILURE)


@main.command()
@click.option("--from", "from_", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="First modify date (yyyy-MM-dd, Beijing).")
@click.option("--to", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Last modify date (yyyy-MM-dd, Beijing), inclusive.")
@click.option("--days-per-request", default=1, show_default=True, type=click.IntRange(min=1),
              help="Split the range into sub-windows of this many days (when no daemon runs).")
@click.option("--detach", is_flag=True,
              help="Record the request for the daemon, print its id and return at once.")
def backfill(from_: Any, to: Any, days_per_request: int, detach: bool) -> None:
    """Re-poll a past range through the same pipeline; emits only real changes.

    With a daemon holding the store, the daemon runs it (this command follows its progress);
    with none, this command runs it.
    """
    from poller.commands import backfill as backfill_

    start: date = from_.date()
    end: date = to.date()
    if end < start:
        raise click.BadParameter("--to is before --from")
    settings, redactor = load_settings(human=True)
    _run(backfill_.run(settings, start, end, days_per_request=days_per_request, detach=detach),
         redactor, settings)


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="JSON for scripts (stable keys, see docs/operations.md).")
def status(as_json: bool) -> None:
    """What the store says: leader, window, first run, sweep, backfills, outbox, requests."""
    from poller.commands import status as status_

    # Reads the store only; its settings come from the same environment as the daemon's.
    settings, redactor = load_settings(human=True, placeholders=NO_API_CREDENTIALS,
                                       defaults={"LOG_LEVEL": "WARNING"})
    _run(status_.run(settings, as_json=as_json), redactor, settings)


@main.command()
@click.option("--created-from", type=click.DateTime(["%Y-%m-%d"]),
              help="Only tasks created on or after this date (yyyy-MM-dd, Beijing).")
@click.option("--created-to", type=click.DateTime(["%Y-%m-%d"]),
              help="Only tasks created on or before this date (yyyy-MM-dd, Beijing).")
@click.option("--task", "task_ids", multiple=True, help="Only these task ids (repeatable).")
def snapshot(created_from: Any, created_to: Any, task_ids: tuple[str, ...]) -> None:
    """Re-publish current-state records from the store (no API calls; safe beside the daemon).

    Every stored task by default. Run it with the daemon's environment: the records carry its
    ce_source (WAIQIN_BASE_URL, WAIQIN_OPENID); the appkey is not needed.
    """
    from poller.commands import snapshot as snapshot_

    if task_ids and (created_from or created_to):
        raise click.UsageError("--task and --created-from/--created-to do not combine")
    created = None
    if created_from or created_to:
        start = created_from.date() if created_from else date.min
        end = created_to.date() if created_to else date.max
        if end < start:
            raise click.BadParameter("--created-to is before --created-from")
        created = (start, end)
    settings, redactor = load_settings(human=True, placeholders={"WAIQIN_APPKEY": "not-used"})
    selection = snapshot_.Selection(created=created, task_ids=task_ids or None)
    _run(snapshot_.run(settings, selection), redactor, settings)


def _known_types(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from poller.commands.tail import KNOWN_TYPES

    for value in values:
        if value not in KNOWN_TYPES:
            close = difflib.get_close_matches(value, KNOWN_TYPES, n=1)
            suggestion = f"did you mean {close[0]}? " if close else ""
            raise click.BadParameter(f"unknown event type {value!r}; {suggestion}"
                                     f"known: {', '.join(KNOWN_TYPES)}")
    return values


@main.command()
@click.option("--type", "types", multiple=True, callback=_known_types,
              help="Only these event types (repeatable), e.g. TaskAccepted.")
@click.option("--task", "task_ids", multiple=True, help="Only these task ids (repeatable).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest event, not the newest.")
@click.option("--dead-letters", is_flag=True, help="Follow the dead-letter topic instead.")
def tail(types: tuple[str, ...], task_ids: tuple[str, ...], from_beginning: bool,
         dead_letters: bool) -> None:
    """Follow the task topic and print events, human readable."""
    from poller.commands import tail as tail_

    settings, redactor = load_settings(human=True, placeholders=NO_API_CREDENTIALS)
    _run(tail_.run(settings, types=set(types), task_ids=set(task_ids),
                   from_beginning=from_beginning, dead_letters=dead_letters), redactor, settings)


# Simulator option types: a share of records or mutations, and a positive duration.
FRACTION = click.FloatRange(0.0, 1.0)
SECONDS = click.FloatRange(min=0.0, min_open=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True)
@click.option("--openid", envvar="WAIQIN_OPENID", default="demo-openid", show_default=True)
@click.option("--appkey", envvar="WAIQIN_APPKEY", default="demo-appkey", show_default=True)
@click.option("--tasks", default=500, show_default=True, help="Tasks to seed.")
@click.option("--days", default=30, show_default=True, help="Days of history to spread them over.")
@click.option("--seed", default=1, show_default=True)
@click.option("--churn", default=0.0, show_default=True, help="Random mutations per second.")
@click.option("--drift/--no-drift", default=True, show_default=True,
              help="Render each response differently (numbers as strings, key and list order).")
@click.option("--late-feedback", default=0.0, show_default=True, type=FRACTION,
              help="Seeded tasks with feedback dated after their modify_time.")
@click.option("--churn-silent", default=0.0, show_default=True, type=FRACTION,
              help="Churn changes that leave modify_time as it was.")
@click.option("--churn-past", default=0.0, show_default=True, type=FRACTION,
              help="Churn changes stamped 1 to --churn-past-days days in the past.")
@click.option("--churn-past-days", default=3, show_default=True, type=click.IntRange(min=1),
              help="How far back --churn-past stamps go.")
@click.option("--churn-hard-delete", default=0.0, show_default=True, type=FRACTION,
              help="Churn mutations that make a task vanish from every answer.")
@click.option("--churn-reappear", default=0.0, show_default=True, type=FRACTION,
              help="Churn mutations that bring a hard-deleted task back as it was.")
@click.option("--churn-revert", default=0.0, show_default=True, type=FRACTION,
              help="Churn mutations that undo a change made within the last minute.")
@click.option("--partial-fraction", default=0.0, show_default=True, type=FRACTION,
              help="Records left out while serving partial data (0: never).")
@click.option("--partial-every", default=600.0, show_default=True, type=SECONDS,
              help="A partial-data episode starts this often (first one after this long).")
@click.option("--partial-for", default=60.0, show_default=True, type=SECONDS,
              help="How long each partial-data episode lasts.")
def simulator(host: str, port: int, openid: str, appkey: str, tasks: int, days: int, seed: int,
              churn: float, drift: bool, late_feedback: float, churn_silent: float,
              churn_past: float, churn_past_days: int, churn_hard_delete: float,
              churn_reappear: float, churn_revert: float, partial_fraction: float,
              partial_every: float, partial_for: float) -> None:
    """Serve the fake Waiqin365 API (signed endpoints, admin API, churn, faults, bad habits)."""
    from poller.commands import serve
    from poller.simulator.churn import ChurnMix
    from poller.simulator.partial import PartialSchedule

    if partial_for > partial_every:
        raise click.UsageError(f"--partial-for ({partial_for:g}s) must not exceed "
                               f"--partial-every ({partial_every:g}s)")
    try:
        mix = ChurnMix(silent=churn_silent, past=churn_past, past_days=churn_past_days,
                       hard_delete=churn_hard_delete, reappear=churn_reappear,
                       revert=churn_revert)
        partial = (PartialSchedule(partial_fraction, partial_every, partial_for)
                   if partial_fraction else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings, _ = load_settings(human=True, placeholders=NO_API_CREDENTIALS)
    redactor = Redactor([appkey])
    logs.configure(settings.log, redactor=redactor, stream=logs.current_stderr())
    _run(serve.simulator(host=host, port=port, openid=openid, appkey=appkey, tasks=tasks,
                         days=days, seed=seed, churn_per_s=churn, drift=drift, mix=mix,
                         late_feedback=late_feedback, partial=partial), redactor)


@main.command()
@click.option("--port", default=9092, show_default=True,
              help="Port on 127.0.0.1 (9092 is what KAFKA_BOOTSTRAP_SERVERS defaults to).")
def broker(port: int) -> None:
    """A local Kafka-compatible broker (Tansu, in memory) for check, tail, backfill and run."""
    from poller.commands import serve

    settings, redactor = load_settings(human=True, placeholders=NO_API_CREDENTIALS)
    _run(serve.broker(port), redactor, settings)


@main.command()
@click.option("--churn", default=1.0, show_default=True, help="Simulated mutations per second.")
@click.option("--tasks", default=300, show_default=True, help="Tasks to seed the simulator with.")
@click.option("--silent", default=0.2, show_default=True, type=FRACTION,
              help="Share of mutations that leave modify_time as it was (only the sweep finds them).")
@click.option("--state-dir", default=".waiqin-demo", show_default=True,
              help="Where the demo keeps its SQLite state (only its own files are replaced).")
def demo(churn: float, tasks: int, silent: float, state_dir: str) -> None:
    """Everything local: simulator, a Kafka-compatible broker, the poller, live events."""
    from poller.commands import demo as demo_

    _run(demo_.run(churn_per_s=churn, tasks=tasks, state_dir=state_dir, silent_fraction=silent),
         Redactor([demo_.APPKEY]))
