"""`waiqin-poller status`: what the store says about the poller, as a table or as JSON.

It only reads: no lock is taken, so it answers the same with or without a daemon running.
The JSON keys are stable (docs/operations.md, "Reading status"); times are RFC 3339 in
Beijing time, durations in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime

import click
from pydantic import AwareDatetime, BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from poller import history, slices
from poller.commands import budget, stored
from poller.config import Settings
from poller.models import Backfill, PollState, beijing_now
from poller.redact import describe_store_url
from poller.store.base import SnapshotStore
from poller.store.locks import Holder
from poller.window import beijing_date

RECENT_BACKFILLS = 5  # finished requests shown besides the active ones


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True)


class LeaderStatus(_Part):
    """Who holds the store's leader lock."""

    held: bool
    pid: int | None = None  # SQLite: the daemon's pid; PostgreSQL: its session's backend pid
    where: str | None = None
    since: AwareDatetime | None = None


class FirstRunStatus(_Part):
    """The first run: reading the whole history once, newest create dates first."""

    complete: bool
    mode: str | None = None
    started_at: AwareDatetime | None = None
    progress: float  # 0..1, by create dates from today back to the oldest
    read_back_to: date | None = None  # tasks created on or after this date are read
    tasks: int | None = None  # tasks read so far (None once complete: not kept)


class SweepStatus(_Part):
    """The reconciliation sweep and the staleness bound it gives."""

    enabled: bool
    period_hours: float
    passes: int
    pass_started_at: AwareDatetime | None = None  # of the pass in progress, or the last one
    progress: float | None = None  # share of stored tasks the pass in progress has read
    read_back_to: date | None = None
    confirming: int = 0  # stored tasks missing once, waiting for the confirming read
    verified_since: AwareDatetime | None = None  # every stored task was read since then
    staleness_seconds: float | None = None  # now - verified_since


class BackfillStatus(_Part):
    """One backfill request and how far the leader got."""

    id: int
    modify_from: date
    modify_to: date
    state: str
    days_done: int
    days: int
    pages: int
    tasks: int
    events: int
    requested_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    error: str | None = None


class RequestsStatus(_Part):
    """API requests today (Beijing day) against the budget, and the projection."""

    today: int
    by_endpoint: dict[str, int]
    budget: int | None
    projected_per_day: float
    window_per_day: float
    sweep_per_day: float
    sweep_pages_per_pass: int


class Status(_Part):
    """Everything `status` reports."""

    now: AwareDatetime
    store: str
    leader: LeaderStatus
    tasks: int
    outbox_depth: int
    last_success: AwareDatetime | None
    window_from: date | None
    window_to: date | None
    first_run: FirstRunStatus
    sweep: SweepStatus
    backfills: list[BackfillStatus]
    requests: RequestsStatus


async def run(settings: Settings, *, as_json: bool) -> Status:
    """Print the status of the store of `settings`: a table, or JSON on stdout."""
    async with stored.existing(settings) as store:
        report = await gather(store, settings, beijing_now())
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        Console(highlight=False).print(table(report))
    return report


async def gather(store: SnapshotStore, settings: Settings, now: datetime) -> Status:
    """Read everything `status` shows from the store."""
    today = beijing_date(now)
    state = await store.load_state()
    requests = await store.read_usage(today)
    counts = await store.created_counts(settings.poll.start_date)
    return summarise(
        state, now=now, store=describe_store_url(settings.store.url),
        leader=await stored.leader_of(store), tasks=await store.count_tasks(),
        outbox_depth=await store.outbox_depth(),
        backfills=await store.backfills(active_only=False), requests=requests,
        projection=budget.projection(counts, settings, today), created_counts=counts,
        sweep_period_h=settings.poll.sweep_period_h)


def summarise(state: PollState, *, now: datetime, store: str, leader: Holder | None, tasks: int,
              outbox_depth: int, backfills: Sequence[Backfill], requests: dict[str, int],
              projection: budget.Projection, created_counts: Mapping[date, int],
              sweep_period_h: float) -> Status:
    """Pure: the status from what the store holds."""
    open_ = state.baseline_complete and state.window_from is not None
    return Status(
        now=now, store=store,
        leader=LeaderStatus(held=False) if leader is None else LeaderStatus(
            held=True, pid=leader.pid, where=leader.where, since=leader.since),
        tasks=tasks, outbox_depth=outbox_depth, last_success=state.last_success_started_at,
        window_from=state.window_from if open_ else None,
        window_to=beijing_date(now) if open_ else None,
        first_run=_first_run(state),
        sweep=_sweep(state, now, sweep_period_h, created_counts),
        backfills=[_backfill(b) for b in _shown(backfills)],
        requests=RequestsStatus(
            today=sum(requests.values()), by_endpoint=dict(sorted(requests.items())),
            budget=projection.budget, projected_per_day=round(projection.per_day, 1),
            window_per_day=round(projection.window_per_day, 1),
            sweep_per_day=round(projection.sweep_per_day, 1),
            sweep_pages_per_pass=projection.sweep_pages_per_pass),
    )


def _first_run(state: PollState) -> FirstRunStatus:
    if state.baseline_complete:
        return FirstRunStatus(complete=True, mode=state.start_mode, progress=1.0)
    run = state.first_run
    if run is None:  # the first cycle has not started it yet
        return FirstRunStatus(complete=False, progress=0.0)
    return FirstRunStatus(complete=False, mode=run.mode, started_at=run.started_at,
                          progress=round(history.progress(run.walk.end, run.started_at), 4),
                          read_back_to=_read_back_to(run.walk.end, run.started_at), tasks=run.tasks)


def _sweep(state: PollState, now: datetime, period_h: float,
           counts: Mapping[date, int]) -> SweepStatus:
    sweep = state.sweep
    # During a pass, a task it has not reached yet was last read by the pass before.
    verified = sweep.previous_pass_started_at or sweep.pass_started_at
    if not state.baseline_complete:
        verified = None
    progress = read_back_to = None
    if sweep.end is not None and sweep.pass_started_at is not None:  # a pass is in progress
        progress = round(slices.share_read(counts, sweep.end), 4)
        read_back_to = _read_back_to(sweep.end, sweep.pass_started_at)
    return SweepStatus(
        enabled=period_h > 0, period_hours=period_h, passes=sweep.passes,
        pass_started_at=sweep.pass_started_at, progress=progress, read_back_to=read_back_to,
        confirming=len(sweep.confirmation.task_ids) if sweep.confirmation else 0,
        verified_since=verified,
        staleness_seconds=round((now - verified).total_seconds(), 1) if verified else None,
    )


def _read_back_to(end: date, started: datetime) -> date | None:
    """The oldest create date a walk has read (None before its first slice)."""
    return None if end >= beijing_date(started) else end + slices.ONE_DAY


def _shown(backfills: Sequence[Backfill]) -> list[Backfill]:
    """Every active request and the few most recent finished ones, oldest first."""
    finished = [b for b in backfills if b.state in ("done", "failed")][-RECENT_BACKFILLS:]
    return [b for b in backfills if b.state not in ("done", "failed") or b in finished]


def _backfill(request: Backfill) -> BackfillStatus:
    return BackfillStatus(
        id=request.id, modify_from=request.modify_from, modify_to=request.modify_to,
        state=request.state, days_done=min(request.days_done, request.days), days=request.days,
        pages=request.pages, tasks=request.tasks, events=request.events,
        requested_at=request.requested_at, finished_at=request.finished_at, error=request.error)


# --- the table -----------------------------------------------------------------------------

def table(status: Status) -> Table:
    """The human view: one row per item."""
    grid = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0),
                 title=f"waiqin-poller status of {status.store}", title_justify="left")
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for item, value in rows(status):
        grid.add_row(item, value)
    return grid


def rows(status: Status) -> list[tuple[str, str]]:
    """(item, value) lines of the table, in words."""
    now = status.now
    out = [("leader", _leader(status.leader, now)),
           ("last success", _ago(status.last_success, now) if status.last_success else "never"),
           ("window", f"{status.window_from} → {status.window_to}" if status.window_from
            else "not open until the first run completes"),
           ("first run", _first_run_words(status.first_run, now)),
           ("sweep", _sweep_words(status.sweep, now)),
           ("staleness bound", _staleness_words(status.sweep, now)),
           ("stored tasks", f"{status.tasks:,}"),
           ("outbox", f"{status.outbox_depth:,} records waiting to be sent"
            if status.outbox_depth else "empty")]
    if not status.backfills:
        out.append(("backfills", "none"))
    for n, request in enumerate(status.backfills):
        out.append(("backfills" if n == 0 else "", _backfill_words(request)))
    out += [("requests today", _requests_words(status.requests)),
            ("projected", budget.projected_words(
                status.requests.projected_per_day, status.requests.window_per_day,
                status.requests.sweep_per_day, status.requests.sweep_pages_per_pass))]
    return out


def _leader(leader: LeaderStatus, now: datetime) -> str:
    if not leader.held:
        return "none: no daemon holds the store"
    who = f"pid {leader.pid}" if leader.pid is not None else "a process"
    since = f", since {_ago(leader.since, now)}" if leader.since else ""
    return f"{who} ({leader.where}{since})"


def _first_run_words(run: FirstRunStatus, now: datetime) -> str:
    if run.complete:
        return f"complete ({run.mode})" if run.mode else "complete"
    if run.started_at is None:
        return "not started"
    back = f", created since {run.read_back_to} read" if run.read_back_to else ""
    return (f"{run.progress:.0%} ({run.mode}, started {_ago(run.started_at, now)}"
            f"{back}, {run.tasks or 0:,} tasks)")


def _sweep_words(sweep: SweepStatus, now: datetime) -> str:
    if not sweep.enabled:
        return "off (POLLER_SWEEP_PERIOD_HOURS=0)"
    every = f"every {sweep.period_hours:g} h, {sweep.passes:,} passes done"
    if sweep.progress is None or sweep.pass_started_at is None:
        return f"between passes ({every})"
    back = f", created since {sweep.read_back_to} read" if sweep.read_back_to else ""
    confirming = f", {sweep.confirming} missing tasks to confirm" if sweep.confirming else ""
    return (f"{sweep.progress:.0%} of a pass started {_ago(sweep.pass_started_at, now)}"
            f"{back}{confirming} ({every})")


def _staleness_words(sweep: SweepStatus, now: datetime) -> str:
    if sweep.verified_since is None or sweep.staleness_seconds is None:
        return "unknown until the first run completes"
    return (f"{duration(sweep.staleness_seconds)}: every stored task was read since "
            f"{sweep.verified_since:%Y-%m-%d %H:%M}")


def _backfill_words(request: BackfillStatus) -> str:
    what = (f"#{request.id} {request.modify_from} → {request.modify_to}: {request.state}, "
            f"{request.days_done}/{request.days} days, {request.pages:,} pages, "
            f"{request.tasks:,} tasks, {request.events:,} events")
    return what + (f" ({request.error})" if request.error else "")


def _requests_words(requests: RequestsStatus) -> str:
    parts = ", ".join(f"{name} {count:,}" for name, count in requests.by_endpoint.items())
    line = f"{requests.today:,}" + (f" ({parts})" if parts else "")
    if requests.budget is None:
        return line + "; no WAIQIN_DAILY_REQUEST_BUDGET"
    return line + f" of WAIQIN_DAILY_REQUEST_BUDGET {requests.budget:,}"


def _ago(when: datetime, now: datetime) -> str:
    return f"{duration((now - when).total_seconds())} ago"


def duration(seconds: float) -> str:
    """A duration as people say it: 12 s, 5 min, 3 h 5 min, 2 d 3 h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
