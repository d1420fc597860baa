"""`waiqin-poller demo`, the README's first command, as a newcomer runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

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

    async def test_silent_changes_show_up_marked_found_by_sweep(self, tmp_path: Path) -> None:
        """Changes that leave modify_time as it was (--silent 1: all of them) appear anyway,
        found by the sweep and marked so."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "demo", "--churn", "20", "--tasks", "60", "--silent", "1",
            "--state-dir", str(tmp_path / "state"), cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", ""), "COLUMNS": "200"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(60):
                while True:
                    line = (await process.stdout.readline()).decode()
                    assert line, "the demo ended early"
                    if EVENT_LINE.search(line) and line.rstrip().endswith("found by sweep"):
                        break
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0

    async def test_quiet_demo_keeps_user_files_and_leaves_nothing_behind(self, tmp_path: Path) -> None:
        """With --churn 0 a heartbeat shows the demo is alive; files it did not make survive.

        1. the state directory holds a user's file and a stale demo database;
        2. the demo runs without churn: a status line appears, metrics answer on loopback;
        3. after Ctrl-C the user's file is still there and the temp directory holds no broker dir.
        """
        state, temp = tmp_path / "state", tmp_path / "tmp"
        state.mkdir()
        temp.mkdir()
        (state / "notes.txt").write_text("mine")
        (state / "demo-state.db").write_text("stale")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poller", "demo", "--churn", "0", "--tasks", "10",
            "--state-dir", str(state), cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", ""), "COLUMNS": "200", "TMPDIR": str(temp)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        metrics_url = ""
        try:
            async with asyncio.timeout(60):
                while True:
                    line = (await process.stdout.readline()).decode()
                    assert line, "the demo ended early"
                    if match := re.search(r"metrics (http://\S+)", line):
                        metrics_url = match.group(1)
                    if "no changes in the last" in line:
                        break
            assert metrics_url.startswith("http://127.0.0.1:")
            async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
                assert response.status == 200
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0
        assert (state / "notes.txt").read_text() == "mine"
        assert list(temp.glob("waiqin-demo-broker-*")) == []
