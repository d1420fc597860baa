"""Page budgets per cycle: the sweep spread over its period, the daily API budget."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from poller import schedule
from poller.models import BEIJING

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=BEIJING)


class TestSweepPages:
    def test_a_pass_is_spread_over_the_period(self) -> None:
        """1,100 pages over 24 h at one cycle a minute: one page per cycle."""
        assert schedule.sweep_pages_per_cycle(1100, period_h=24, interval_s=60) == 1

    def test_a_short_period_reads_more_per_cycle(self) -> None:
        """The same pass in one hour: 19 pages a cycle; off at period 0."""
        assert schedule.sweep_pages_per_cycle(1100, period_h=1, interval_s=60) == 19
        assert schedule.sweep_pages_per_cycle(1100, period_h=0, interval_s=60) == 0

    def test_a_million_tasks_cost_about_1100_requests_a_pass(self) -> None:
        """A million tasks over three years (~913 a day, rows 1000, 10-page slices): one
        pass costs the pages the tasks fill plus one short page per slice."""
        counts = {date(2026, 11, 25) - timedelta(days=n): 913 for n in range(1095)}
        pages = schedule.pages_per_pass(counts, date(2026, 11, 25), rows=1000, max_pages=10)
        assert 1000 <= pages <= 1300


class TestBudget:
    def test_no_budget_gives_what_is_wanted(self) -> None:
        """Without WAIQIN_DAILY_REQUEST_BUDGET every wanted page is allowed."""
        plan = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=3, wanted_extra=40,
                                   sweep_pages=5, budget=None, used_today=10**6)
        assert (plan.extra_pages, plan.sweep_pages, plan.interval_s) == (40, 5, 60)

    def test_extra_pages_are_pro_rata(self) -> None:
        """At noon with 10,000 left, a window of 2 requests a minute reserves 1,440; the
        remaining 8,560 spread over 720 cycles allow 11 extra pages a cycle."""
        plan = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=2, wanted_extra=40,
                                   sweep_pages=5, budget=20_000, used_today=10_000)
        assert plan.extra_pages == 11 and plan.sweep_pages == 5 and not plan.is_stretched

    def test_the_window_alone_too_much_stretches_the_interval(self) -> None:
        """When the window alone would overrun the day, no extra page, and the interval grows
        so that the window fits what is left."""
        plan = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=10, wanted_extra=40,
                                   sweep_pages=5, budget=5_000, used_today=2_000)
        assert plan.extra_pages == 0 and plan.is_stretched
        assert plan.interval_s == 12 * 3600 * 10 / 3000

    def test_an_exhausted_budget_waits_for_the_new_day(self) -> None:
        """Nothing left: the next cycle is after Beijing midnight."""
        plan = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=3, wanted_extra=40,
                                   sweep_pages=5, budget=1_000, used_today=1_000)
        assert plan.interval_s == 12 * 3600 and plan.extra_pages == 0

    def test_the_first_run_may_use_all_but_the_window_reserve(self) -> None:
        """Not pro rata: what the day has left minus one window request per remaining cycle
        (720 at noon), or minus half of it when the window cannot be afforded anyway."""
        plan = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=1, wanted_extra=300,
                                   sweep_pages=0, budget=2_000, used_today=0, pro_rata=False)
        assert plan.extra_pages == 300 and not plan.is_stretched
        reserved = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=1, wanted_extra=2000,
                                       sweep_pages=0, budget=2_000, used_today=0, pro_rata=False)
        assert reserved.extra_pages == 2000 - 720
        tight = schedule.plan_cycle(now=NOON, interval_s=60, window_requests=1, wanted_extra=300,
                                    sweep_pages=0, budget=500, used_today=0, pro_rata=False)
        assert tight.extra_pages == 250

    @given(st.integers(1, 100_000), st.integers(0, 100_000), st.integers(0, 50),
           st.integers(0, 1000), st.floats(1, 3600), st.integers(0, 24 * 3600 - 1))
    def test_a_day_never_exceeds_the_budget(self, budget: int, used: int, window: int, wanted: int,
                                            interval: float, second: int) -> None:
        """Whatever the state of the day, the window at the planned interval plus the extra
        pages of this cycle fit what the day has left (when anything is left at all)."""
        now = NOON.replace(hour=0, minute=0) + timedelta(seconds=second)
        plan = schedule.plan_cycle(now=now, interval_s=interval, window_requests=window,
                                   wanted_extra=wanted, sweep_pages=min(wanted, 3), budget=budget,
                                   used_today=used)
        remaining = schedule.seconds_to_midnight(now)
        cycles = max(1.0, remaining / plan.interval_s)
        if budget > used + window:
            assert window * cycles + plan.extra_pages <= budget - used + 1e-6 * budget


class TestProjection:
    def test_requests_per_day(self) -> None:
        """2 window requests a minute and a 1,100-page pass a day: 3,980 requests a day."""
        assert schedule.projected_per_day(window_requests=2, interval_s=60, pages_per_pass=1100,
                                          period_h=24) == 2880 + 1100

    def test_seconds_to_beijing_midnight(self) -> None:
        """Counted in Beijing, whatever the zone of `now`."""
        assert schedule.seconds_to_midnight(NOON) == 12 * 3600
