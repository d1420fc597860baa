"""Fuzzing bad input: API responses through decode/normalise/diff/scan, and configuration values."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller import diff, events, fetch, normalise, wire
from poller.config import PollSettings, Settings
from poller.errors import ConfigError, NormaliseError, SourceError
from poller.fetch import Page
from poller.http import HealthState
from poller.loop import Poller
from poller.models import NormalisedTask, Window
from poller.publish import MemoryPublisher
from poller.store.memory import MemoryStore
from tests.strategies import garbled_tasks, raw_tasks

OBSERVED_AT = datetime(2024, 5, 20, 2, 0, tzinfo=UTC)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)
huge_strings = st.builds(lambda c, n: c * n, st.sampled_from(["x", "测", "\u0000", " "]),
                         st.integers(min_value=10_000, max_value=200_000))


def check_record(raw: object) -> NormalisedTask | None:
    """Normalise then diff (new and against itself) then encode; nothing but NormaliseError
    escapes, and from encoding only for a record that cannot fit any Kafka message (an id of
    hundreds of kilobytes repeated in key and headers): the page planner dead-letters it."""
    try:
        task = normalise.task(raw)
    except NormaliseError:
        return None
    first = diff.observe(None, task, observed_at=OBSERVED_AT)
    for event in first.events:
        try:
            events.encode(event, source="fuzz")
        except NormaliseError as exc:
            assert exc.kind == "too_large" and len(task.task_id.encode()) > 100_000
    stored = first.snapshot(task)
    assert stored is not None
    again = diff.observe(stored, task, observed_at=OBSERVED_AT)
    assert again.events == [], "the same observation twice must be silent"
    return task


class TestRecordFuzz:
    @FUZZ
    @given(json_values)
    def test_any_json_value_as_a_record(self, raw: Any) -> None:
        """An arbitrary JSON value as a record is a NormaliseError or a valid task."""
        check_record(raw)

    @FUZZ
    @given(garbled_tasks())
    def test_garbled_fields(self, raw: dict[str, Any]) -> None:
        """A task with some fields replaced by arbitrary JSON is a NormaliseError or a valid task."""
        check_record(raw)

    @FUZZ
    @given(raw_tasks(), st.sampled_from(["task_content", "task_id", "create_time", "receivers",
                                         "feedback_detail", "unknown_field"]), huge_strings)
    def test_huge_strings(self, raw: dict[str, Any], key: str, value: str) -> None:
        """Huge strings in any field never crash normalisation or the diff."""
        raw[key] = value
        check_record(raw)

    @FUZZ
    @given(raw_tasks(), st.lists(st.sampled_from(["task_id", "receivers", "feedback_detail",
                                                  "modify_time", "task_status", "status"]),
                                 unique=True, min_size=1))
    def test_missing_fields(self, raw: dict[str, Any], missing: list[str]) -> None:
        """A task without some of its fields is a NormaliseError or a valid task."""
        for key in missing:
            raw.pop(key, None)
        task = check_record(raw)
        if "task_id" in missing:
            assert task is None


class TestResponseFuzz:
    @FUZZ
    @given(st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps),
                     st.builds(lambda d: orjson.dumps({"return_code": "0", "response_data": d}),
                               json_values),
                     st.builds(lambda d: orjson.dumps({"return_code": 0, "response_data": d}),
                               json_values.map(lambda v: orjson.dumps(v).decode()))))
    def test_any_body_is_data_or_a_source_error(self, body: bytes) -> None:
        """Invalid UTF-8, wrong JSON shapes and odd envelopes decode to records or a SourceError
        (records split into their bytes raise it when one is read that is not JSON)."""
        try:
            data = fetch._decode("queryTask", 200, {}, body)
            assert isinstance(data, list | wire.WireRecords)
            records = list(data)
        except SourceError:
            return
        for raw in records:
            check_record(raw)


class _Pages:
    """A TaskSource serving fixed pages (the scan's input, without HTTP)."""

    def __init__(self, pages: list[list[Any]]) -> None:
        self._pages = pages
        self.requests: Counter[str] = Counter()

    async def iter_pages(self, window: Window, *, split_days: int | None = None, start_page: int = 1,
                         max_pages: int | None = None) -> AsyncIterator[Page]:
        for number, records in enumerate(self._pages, start=1):
            yield Page(window, number, records, is_last=number == len(self._pages))

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        return []


async def _scan(pages: list[list[Any]]) -> tuple[MemoryStore, MemoryPublisher]:
    store, publisher = MemoryStore(), MemoryPublisher()
    await store.start()
    await publisher.start()
    poller = Poller(PollSettings(), client=_Pages(pages), store=store, publisher=publisher,
                    health=HealthState(stuck_after_s=60, ready_window_s=60), source="fuzz")
    lease = store.leadership()
    assert await lease.acquire(asyncio.Event())
    today = datetime.now(UTC).date()
    await poller.pages.scan(Window(modify_from=today, modify_to=today), lease)
    return store, publisher


class TestPageFuzz:
    @FUZZ
    @given(st.lists(st.one_of(raw_tasks(), garbled_tasks()), min_size=1, max_size=6),
           st.data())
    def test_duplicates_and_bad_records_in_a_page(self, records: list[Any], data: st.DataObject) -> None:
        """Duplicate task ids and malformed records: good tasks stored, bad ones dead-lettered, no crash."""
        page = [*records, data.draw(st.sampled_from(records))]  # a duplicate task id in the page
        store, publisher = asyncio.run(_scan([page, list(page)]))
        good = {t.task_id for r in page if (t := _normalised(r)) is not None}
        bad = [r for r in page if _normalised(r) is None]
        assert good <= set(store.snapshots)
        assert bool(publisher.of("dead-letter")) == bool(bad)
        created = [r for r in publisher.of("tasks") if dict(r.headers).get("ce_type") == b"TaskCreated"]
        assert len(created) == len(good), "one TaskCreated per distinct task, never twice"


def _normalised(raw: Any) -> NormalisedTask | None:
    try:
        return normalise.task(raw)
    except NormaliseError:
        return None


BASE_ENV = {"WAIQIN_OPENID": "o", "WAIQIN_APPKEY": "k"}
CONFIG_NAMES = [
    "WAIQIN_BASE_URL", "WAIQIN_OPENID", "WAIQIN_APPKEY", "WAIQIN_PAGE_ROWS", "WAIQIN_MAX_ATTEMPTS",
    "WAIQIN_RATE_LIMIT_PER_SECOND", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_ENABLE_IDEMPOTENCE",
    "KAFKA_SECURITY_PROTOCOL", "KAFKA_LINGER_MS", "POLLER_STORE_URL", "POLLER_POLL_INTERVAL",
    "POLLER_LOOKBACK_MINUTES", "POLLER_START_MODE", "POLLER_START_DATE", "POLLER_TOPIC_PREFIX",
    "POLLER_TOPIC_PARTITIONS", "POLLER_HTTP_PORT", "LOG_LEVEL", "LOG_FORMAT",
    "POLLER_TYPE_REFRESH_SECONDS",
]
config_values = st.one_of(
    st.text(max_size=30), st.sampled_from(["", " ", "-1", "0", "1e400", "nan", "inf", "true",
                                           "yes", "2024-13-40", "sqlite://", "99999999999"]),
    st.integers(min_value=-10**6, max_value=10**6).map(str),
)


class TestConfigFuzz:
    @FUZZ
    @given(st.dictionaries(st.sampled_from(CONFIG_NAMES), config_values, max_size=5))
    def test_any_values_load_or_name_the_variable(self, overrides: dict[str, str]) -> None:
        """Any values end in a valid Settings or a ConfigError naming one of the variables set."""
        env = {**BASE_ENV, **{k: v.replace("\x00", "") for k, v in overrides.items()}}
        try:
            loaded = Settings.load(env)
        except ConfigError as exc:
            named = [name for name in CONFIG_NAMES if name in str(exc)]
            assert named, f"the error names no variable: {exc}"
            return
        assert isinstance(loaded, Settings)

    @FUZZ
    @given(st.sampled_from(["WAIQIN_OPENID", "WAIQIN_APPKEY"]))
    def test_missing_credentials_are_named(self, name: str) -> None:
        """A missing credential is a ConfigError naming it."""
        env = dict(BASE_ENV)
        del env[name]
        try:
            Settings.load(env)
        except ConfigError as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{name} missing but Settings loaded")
