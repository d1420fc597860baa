"""A shortened soak: churn with reverts, kills, broker and store outages, API faults and malformed
records lose nothing and contradict nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import Options, soak


class TestSoak:
    @pytest.mark.timeout(110)
    async def test_nothing_lost_or_contradicted_under_faults(self, tmp_path: Path) -> None:
        """Every mutated task's final state is what a de-duplicating, sequence-ordered consumer
        ends with, the state topic agrees, and no id or sequence carries two contents."""
        report = await soak(Options(cycles=20, kills=2, outages=1, store_outages=1, store="sqlite",
                                    seed=3, churn_per_s=6.0), tmp_path)
        print(report.line())
        assert report.kills >= 2 and report.outages >= 1 and report.store_outages >= 1
        assert report.cycles >= 20 and report.reverts > 0
        assert report.verdict.events > 0 and report.verdict.state_records > 0
        assert report.lost == 0 and report.contradictions == 0 and report.problems == [], report.problems[:10]
