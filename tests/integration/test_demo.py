"""`waiqin-poller demo`, the README's first command, as a newcomer runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

EVENT_LINE = re.compile(r"\+08:00\s+(Task\w+|FeedbackAdded)\s+\d+")


class TestDemo:
    async def test_shows_live_events_and_stops_on_ctrl_c(self, tmp_path: Path) -> None:
        """The demo prints churned events as they happen and exits 0 on SIGINT."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "demo", "--churn", "20", "--tasks", "60",
            "--state-dir", str(tmp_path / "state"), cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", ""), "COLUMNS": "200"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(60):
                while len(seen) < 10:
                    line = (await process.stdout.readline()).decode()
                    assert line, "the demo ended early"
                    if match := EVENT_LINE.search(line):
                        seen.append(match.group(1))
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0
        assert len(seen) >= 10
        assert (tmp_path / "state" / "demo-state.db").exists()
