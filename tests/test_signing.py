"""Tests for poller.signing: the Beijing timestamp and the md5 digest of docs/design.md §2."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from poller.fetch import WaiqinClient
from poller.models import Window
from poller.signing import beijing_timestamp, digest
from poller.simulator import Simulator
from tests.fixtures.simulator import settings_for


@pytest.fixture
def los_angeles_tz() -> Iterator[None]:
    """Run the test with the process time zone set to America/Los_Angeles (UTC-8/-7)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


class TestDigest:
    def test_matches_formula_computed_by_hand(self) -> None:
        """The digest equals md5 over body|appkey|timestamp computed independently."""
        body = b'{"page":"1","rows":"5","modify_date_from":"2024-03-01"}'
        expected = hashlib.md5(
            body + b"|" + "k3y-密钥".encode() + b"|" + b"20240301120000").hexdigest()
        assert digest(body, "k3y-密钥", "20240301120000") == expected

    def test_is_lower_case_hex(self) -> None:
        """The digest is 32 lower-case hex characters."""
        value = digest(b"{}", "appkey", "20240101000000")
        assert len(value) == 32 and value == value.lower()
        int(value, 16)

    def test_signs_exact_bytes(self) -> None:
        """Bytes that differ only in spacing give a different digest (sign what you send)."""
        assert digest(b'{"a":"1"}', "k", "t") != digest(b'{"a": "1"}', "k", "t")


class TestBeijingTimestamp:
    def test_converts_utc_to_beijing(self) -> None:
        """A UTC instant is rendered eight hours later, as yyyyMMddHHmmss."""
        now = datetime(2024, 2, 29, 20, 5, 9, tzinfo=UTC)
        assert beijing_timestamp(now) == "20240301040509"

    def test_ignores_machine_zone(self, los_angeles_tz: None) -> None:
        """With TZ set to Los Angeles, a local-aware time still yields Beijing wall time."""
        local = datetime.fromtimestamp(1_700_000_000).astimezone()  # 2023-11-14 22:13:20 UTC
        assert local.utcoffset() == timedelta(hours=-8)
        assert beijing_timestamp(local) == "20231115061320"

    def test_other_offsets(self) -> None:
        """Any aware datetime is converted, whatever its offset."""
        now = datetime(2024, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
        assert beijing_timestamp(now) == "20240101130000"

    def test_rejects_naive(self) -> None:
        """A naive datetime is refused rather than silently read in the machine's zone."""
        with pytest.raises(ValueError, match="naive"):
            beijing_timestamp(datetime(2024, 1, 1))


class TestSignedRequests:
    async def test_accepted_under_other_zone(
        self, los_angeles_tz: None, simulator: Simulator,
    ) -> None:
        """With the process in another zone, the client's signed requests are still accepted."""
        async with WaiqinClient(settings_for(simulator)) as client:
            pages = [page async for page in client.iter_pages(Window())]
        assert sum(len(p.records) for p in pages) == len(simulator.store.tasks)
