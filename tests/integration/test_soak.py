"""A shortened soak: churn, kills, a broker outage, API faults and malformed records lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import soak


class TestSoak:
    @pytest.mark.timeout(110)
    async def test_nothing_lost_under_faults(self, tmp_path: Path) -> None:
        """Every mutated task's final state is the newest event on the topic; no noise, no lost."""
        report = await soak(cycles=20, kills=2, outages=1, interval=0.2, seed=3,
                            churn_per_s=6.0, work=tmp_path)
        print(report.line())
        assert report.kills >= 2 and report.outages >= 1 and report.cycles >= 20
        assert report.mutations > 0 and report.events > 0
        assert report.lost == 0 and report.problems == [], report.problems[:10]
