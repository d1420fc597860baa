"""The API requests a day the poller is projected to make, for `status` and `check`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from poller import schedule
from poller.config import Settings
from poller.store.base import SnapshotStore

# What one window cycle is estimated to cost: in steady state the window is today alone,
# almost always one page (type refreshes and busy days add a few).
WINDOW_REQUESTS_PER_CYCLE = 1


@dataclass(frozen=True, slots=True)
class Projection:
    """Requests a day at the configured interval and sweep period, for the stored history."""

    window_per_day: float
    sweep_per_day: float
    sweep_pages_per_pass: int
    budget: int | None  # WAIQIN_DAILY_REQUEST_BUDGET

    @property
    def per_day(self) -> float:
        return self.window_per_day + self.sweep_per_day

    @property
    def is_over_budget(self) -> bool:
        """The daemon will stretch its interval (sweep and backfills get what is left)."""
        return self.budget is not None and self.per_day > self.budget

    def describe(self) -> str:
        """One line for people: the total, its parts and the budget."""
        line = projected_words(self.per_day, self.window_per_day, self.sweep_per_day,
                               self.sweep_pages_per_pass)
        if self.budget is None:
            return line + "; no WAIQIN_DAILY_REQUEST_BUDGET"
        verdict = "over it: the interval will be stretched" if self.is_over_budget else "within it"
        return line + f"; WAIQIN_DAILY_REQUEST_BUDGET {self.budget:,}, {verdict}"


def projected_words(per_day: float, window: float, sweep: float, pages_per_pass: int) -> str:
    """The projection in words, as `check` and `status` print it."""
    pages = f"{pages_per_pass:,} page{'' if pages_per_pass == 1 else 's'} a pass"
    return (f"about {per_day:,.0f} requests a day (window {window:,.0f}, sweep {sweep:,.0f}: "
            f"{pages})")


async def project(store: SnapshotStore, settings: Settings, today: date) -> Projection:
    """The projection from the stored tasks per create date (the sweep's slices)."""
    return projection(await store.created_counts(settings.poll.start_date), settings, today)


def projection(counts: Mapping[date, int], settings: Settings, today: date) -> Projection:
    """Pure: the projection for these stored tasks per create date."""
    poll, api = settings.poll, settings.waiqin
    pages = schedule.pages_per_pass(counts, today, rows=api.page_rows,
                                    max_pages=poll.sweep_slice_pages)

    def per_day(*, window: int, sweep_pages: int) -> float:
        return schedule.projected_per_day(window_requests=window, interval_s=poll.poll_interval_s,
                                          pages_per_pass=sweep_pages, period_h=poll.sweep_period_h)

    window = per_day(window=WINDOW_REQUESTS_PER_CYCLE, sweep_pages=0)
    total = per_day(window=WINDOW_REQUESTS_PER_CYCLE, sweep_pages=pages)
    return Projection(window_per_day=window, sweep_per_day=total - window,
                      sweep_pages_per_pass=pages if poll.sweep_period_h > 0 else 0,
                      budget=api.daily_request_budget)
