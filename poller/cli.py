"""The `waiqin-poller` command: parse arguments, configure logs, run; the only sys.exit."""

from __future__ import annotations

import asyncio
import sys
from datetime import date
from typing import Any

import click

from poller import __version__, logs
from poller.config import Settings
from poller.errors import ConfigError, PollerError

# Exit codes: 0 clean stop, 1 a check or command failed, 2 bad configuration.
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def load_settings(**defaults: str) -> Settings:
    """Settings from the environment (`defaults` fill unset variables); a bad one exits 2
    with one line naming it."""
    try:
        settings = Settings.load(defaults=defaults)
    except ConfigError as exc:
        click.echo(f"waiqin-poller: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.configure(settings.log, secrets=logs.secret_values(settings))
    for name in settings.unknown_variables():
        click.echo(f"waiqin-poller: warning: {name} is not a setting (typo?); ignored", err=True)
    return settings


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except PollerError as exc:
        click.echo(f"waiqin-poller: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


@click.group()
@click.version_option(__version__, prog_name="waiqin-poller")
def main() -> None:
    """Waiqin365 customer tasks as a Kafka event stream."""


@main.command()
def run() -> None:
    """Run the daemon (configured by the environment; see the README)."""
    from poller import app

    settings = load_settings()
    _run(app.run(settings))


@main.command()
def check() -> None:
    """Validate the configuration and reach the API, the store and Kafka."""
    from poller.commands import check as checks

    settings = load_settings()
    ok = _run(checks.run(settings))
    sys.exit(0 if ok else EXIT_FAILURE)


@main.command()
@click.option("--from", "from_", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="First modify date (yyyy-MM-dd, Beijing).")
@click.option("--to", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Last modify date (yyyy-MM-dd, Beijing), inclusive.")
@click.option("--days-per-request", default=1, show_default=True,
              help="Split the range into sub-windows of this many days.")
def backfill(from_: Any, to: Any, days_per_request: int) -> None:
    """Re-poll a past range through the same pipeline; emits only real changes."""
    from poller.commands import backfill as backfill_

    start: date = from_.date()
    end: date = to.date()
    if end < start:
        raise click.BadParameter("--to is before --from")
    settings = load_settings()
    _run(backfill_.run(settings, start, end, days_per_request=days_per_request))


@main.command()
@click.option("--type", "types", multiple=True, help="Only these event types (repeatable).")
@click.option("--task", "task_ids", multiple=True, help="Only these task ids (repeatable).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest event, not the newest.")
@click.option("--dead-letters", is_flag=True, help="Follow the dead-letter topic instead.")
def tail(types: tuple[str, ...], task_ids: tuple[str, ...], from_beginning: bool,
         dead_letters: bool) -> None:
    """Follow the task topic and print events, human readable."""
    from poller.commands import tail as tail_

    settings = load_settings(WAIQIN_OPENID="-", WAIQIN_APPKEY="-")  # tail never calls the API
    _run(tail_.run(settings, types=set(types), task_ids=set(task_ids),
                   from_beginning=from_beginning, dead_letters=dead_letters))


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
def simulator(host: str, port: int, openid: str, appkey: str, tasks: int, days: int, seed: int,
              churn: float, drift: bool) -> None:
    """Serve the fake Waiqin365 API (signed endpoints, admin API, churn, faults)."""
    from poller.simulator import run_simulator

    _run(run_simulator(host=host, port=port, openid=openid, appkey=appkey, tasks=tasks,
                       days=days, seed=seed, churn_per_s=churn, drift=drift))


@main.command()
@click.option("--churn", default=1.0, show_default=True, help="Simulated mutations per second.")
@click.option("--tasks", default=300, show_default=True, help="Tasks to seed the simulator with.")
@click.option("--state-dir", default=".waiqin-demo", show_default=True,
              help="Where the demo keeps its SQLite state.")
def demo(churn: float, tasks: int, state_dir: str) -> None:
    """Everything local: simulator, a Kafka-compatible broker, the poller, live events."""
    from poller.commands import demo as demo_

    _run(demo_.run(churn_per_s=churn, tasks=tasks, state_dir=state_dir))
