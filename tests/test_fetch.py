"""Tests for poller.fetch over real HTTP against the simulator: paging, faults, retries, secrets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from poller.config import WaiqinSettings
from poller.errors import (
    AUTH_CAUSES,
    SourceAuthError,
    SourceError,
    SourceResponseError,
    SourceUnavailable,
)
from poller.fetch import (
    CODE_BAD_PARAMS,
    CODE_BUSY,
    CODE_IP_REFUSED,
    QUERY_TASK,
    Page,
    WaiqinClient,
    _decode,
    map_transport_error,
)
from poller.models import Window, beijing_now
from poller.simulator import Simulator
from tests.fixtures.simulator import APPKEY, MakeSimulator, settings_for

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


ALL = Window()  # no date filter: the whole history


async def scan(settings: WaiqinSettings, window: Window = ALL, **kw: Any) -> list[Page]:
    """Every page of one scan of `window`."""
    async with WaiqinClient(settings, **FAST) as client:
        return [page async for page in client.iter_pages(window, **kw)]


def ids(pages: list[Page]) -> list[str]:
    return [r["task_id"] for p in pages for r in p.records]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestPaging:
    async def test_reads_every_task_once(self, simulator: Simulator,
                                         waiqin_settings: WaiqinSettings) -> None:
        """Thirty tasks at ten rows make three full pages and an empty fourth, every task once."""
        pages = await scan(waiqin_settings)
        assert [len(p.records) for p in pages] == [10, 10, 10, 0]
        assert [p.number for p in pages] == [1, 2, 3, 4]
        assert sorted(ids(pages)) == sorted(simulator.store.tasks)

    async def test_short_last_page_ends_scan(self, make_simulator: MakeSimulator) -> None:
        """A page shorter than rows is the last one requested."""
        sim = await make_simulator(tasks=25)
        pages = await scan(settings_for(sim))
        assert [len(p.records) for p in pages] == [10, 10, 5]
        assert sim.requests[QUERY_TASK] == 3

    async def test_thousand_rows_is_one_request(self, simulator: Simulator) -> None:
        """With rows at the API's cap of 1000, a small data set is one page."""
        pages = await scan(settings_for(simulator, WAIQIN_PAGE_ROWS=1000))
        assert len(pages) == 1 and len(pages[0].records) == 30

    async def test_rows_above_cap_refused(self, waiqin_settings: WaiqinSettings) -> None:
        """The simulator refuses rows above 1000 like the real API, as SourceResponseError."""
        async with WaiqinClient(waiqin_settings, **FAST) as client:
            with pytest.raises(SourceResponseError) as info:
                await client.call(QUERY_TASK, {"page": "1", "rows": "1001"})
        assert info.value.code == CODE_BAD_PARAMS

    async def test_records_ordered_by_modify_time(self, waiqin_settings: WaiqinSettings) -> None:
        """Records arrive in ascending modify_time, as offset paging over the real API does."""
        times = [r["modify_time"] for p in await scan(waiqin_settings) for r in p.records]
        assert times == sorted(times)


class TestReadAhead:
    async def test_next_page_is_requested_while_the_caller_works(
            self, simulator: Simulator, waiqin_settings: WaiqinSettings) -> None:
        """After a full page the next one is already on its way; closing early drops it."""
        async with WaiqinClient(waiqin_settings) as client:
            pages = client.iter_pages(Window())
            first = await anext(pages)
            assert len(first.records) == waiqin_settings.page_rows
            deadline = time.monotonic() + 5
            while simulator.requests["queryTask"] < 2:  # polling the server's counter
                assert time.monotonic() < deadline, "page 2 was not read ahead"
                await asyncio.sleep(0.01)
            await pages.aclose()
            assert simulator.requests["queryTask"] == 2

    async def test_pages_still_arrive_in_order(self, simulator: Simulator,
                                               waiqin_settings: WaiqinSettings) -> None:
        """Reading ahead changes when pages are fetched, never their order or content."""
        async with WaiqinClient(waiqin_settings) as client:
            numbers = [page.number async for page in client.iter_pages(Window())]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 3


class TestDayFilters:
    async def test_modify_day(self, simulator: Simulator,
                              waiqin_settings: WaiqinSettings) -> None:
        """A one-day modify window returns exactly the tasks modified that Beijing day."""
        day = max(t["modify_time"][:10] for t in simulator.store.tasks.values())
        when = date.fromisoformat(day)
        pages = await scan(waiqin_settings, Window(modify_from=when, modify_to=when))
        expected = {k for k, t in simulator.store.tasks.items() if t["modify_time"][:10] == day}
        assert set(ids(pages)) == expected and expected

    async def test_create_range_inclusive(self, simulator: Simulator,
                                          waiqin_settings: WaiqinSettings) -> None:
        """Create bounds are inclusive on both ends."""
        days = sorted({t["create_time"][:10] for t in simulator.store.tasks.values()})
        lo, hi = date.fromisoformat(days[0]), date.fromisoformat(days[1])
        pages = await scan(waiqin_settings, Window(create_from=lo, create_to=hi))
        expected = {k for k, t in simulator.store.tasks.items()
                    if days[0] <= t["create_time"][:10] <= days[1]}
        assert set(ids(pages)) == expected

    async def test_future_window_is_empty(self, waiqin_settings: WaiqinSettings) -> None:
        """A window with no tasks yields one empty page."""
        future = beijing_now().date() + timedelta(days=3)
        pages = await scan(waiqin_settings, Window(modify_from=future, modify_to=future))
        assert [len(p.records) for p in pages] == [0]


class TestResponseData:
    @pytest.mark.parametrize("as_string", [True, False], ids=["string", "array"])
    async def test_both_shapes_decode_alike(self, make_simulator: MakeSimulator,
                                            as_string: bool) -> None:
        """DATA as a JSON string and as a JSON array decode to the same records."""
        sim = await make_simulator(drift=False, data_as_string=as_string)
        pages = await scan(settings_for(sim))
        tidy = Simulator("x", "y", tasks=30, days=5, drift=False)
        assert [r for p in pages for r in p.records] == [
            tidy.renderer.task(t) for t in tidy.store.query()]

    async def test_drift_arrives_raw(self, simulator: Simulator,
                                     waiqin_settings: WaiqinSettings) -> None:
        """Drifting types, empty strings and key order reach the caller exactly as served."""
        pages = await scan(waiqin_settings)
        served = list(simulator.served)
        assert [p.records for p in pages] == served
        for page, sent in zip(pages, served, strict=True):
            assert [list(r) for r in page.records] == [list(r) for r in sent]
        statuses = {type(r["task_status"]) for p in pages for r in p.records}
        assert statuses == {int, str}
        assert any("" in r.values() for p in pages for r in p.records)

    async def test_task_types(self, simulator: Simulator,
                              waiqin_settings: WaiqinSettings) -> None:
        """queryTaskType returns the raw records of the asked ids."""
        async with WaiqinClient(waiqin_settings, **FAST) as client:
            records = await client.query_task_types(["10001", "10002", "99999"])
        assert sorted(r["type_id"] for r in records) == ["10001", "10002"]
        assert all(r["type_name"] for r in records)


PADDING = b" " * 65536  # JSON allows whitespace after the envelope: the body stays valid


@asynccontextmanager
async def streamed(sim: Simulator, padding_chunks: int, written: list[int]) -> AsyncIterator[str]:
    """The simulator's API behind a proxy layer that streams each answer without Content-Length.

    The answer is followed by `padding_chunks` chunks of whitespace; `written` receives how many
    bytes the server managed to send before the client hung up (or all of them).
    """
    @web.middleware
    async def stream(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        answer = await handler(request)
        assert isinstance(answer, web.Response) and isinstance(answer.body, bytes)
        response = web.StreamResponse(status=answer.status,
                                      headers={"Content-Type": "application/json;charset=utf-8"})
        await response.prepare(request)  # no Content-Length: chunked transfer encoding
        sent = 0
        try:
            for chunk in [answer.body, *[PADDING] * padding_chunks]:
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading, as it should
        written.append(sent)
        return response

    app = sim.app()
    app.middlewares.append(stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class TestResponseSize:
    async def test_content_length_over_the_limit(self, simulator: Simulator) -> None:
        """A response announcing more than WAIQIN_MAX_RESPONSE_BYTES fails at once, unretried."""
        settings = settings_for(simulator, max_response_bytes=2000)
        with pytest.raises(SourceResponseError,
                           match=r"WAIQIN_MAX_RESPONSE_BYTES=2000 \(Content-Length is \d+ bytes\)"):
            await scan(settings)
        assert simulator.requests[QUERY_TASK] == 1

    async def test_endless_body_is_cut_off(self, simulator: Simulator) -> None:
        """A chunked body that never ends fails once the limit is passed, without reading on."""
        written: list[int] = []
        total = 1000 * len(PADDING)  # 65 MB the server would send
        async with streamed(simulator, 1000, written) as base_url:
            settings = settings_for(simulator, base_url=base_url, max_response_bytes=200_000)
            started = time.monotonic()
            with pytest.raises(SourceResponseError, match="more than 200000 bytes arrived"):
                await scan(settings)
            assert time.monotonic() - started < 3.0
        assert written and written[0] < total / 4  # the client hung up long before the end

    async def test_streamed_body_within_the_limit(self, simulator: Simulator) -> None:
        """A chunked body below the limit is read whole, padding and all."""
        written: list[int] = []
        async with streamed(simulator, 4, written) as base_url:
            settings = settings_for(simulator, base_url=base_url, max_response_bytes=1_000_000)
            pages = await scan(settings)
        assert sorted(ids(pages)) == sorted(simulator.store.tasks)


class TestRetries:
    @pytest.mark.parametrize("kind,params", [
        ("http_500", {}), ("http_429", {"retry_after": 0}), ("garbage", {}),
        ("error_code", {"code": CODE_BUSY}), ("latency", {"ms": 700}),
    ])
    async def test_transient_fault_retried(self, simulator: Simulator, kind: str,
                                           params: dict[str, Any]) -> None:
        """Two faulty answers are retried and the third attempt succeeds."""
        simulator.inject(kind, 2, QUERY_TASK, **params)
        settings = settings_for(simulator, WAIQIN_PAGE_ROWS=100,
                                WAIQIN_REQUEST_TIMEOUT_SECONDS=0.4)
        retries = metric("waiqin_poller_api_retries_total", endpoint=QUERY_TASK)
        with capture_logs() as logs:
            pages = await scan(settings)
        assert len(pages[0].records) == 30
        assert simulator.requests[QUERY_TASK] == 3
        assert metric("waiqin_poller_api_retries_total", endpoint=QUERY_TASK) == retries + 2
        retry_logs = [e for e in logs if e["event"] == "api_retry"]
        assert [e["attempt"] for e in retry_logs] == [1, 2]
        assert all(e["endpoint"] == QUERY_TASK and e["error"] for e in retry_logs)

    async def test_persistent_fault_gives_up(self, simulator: Simulator) -> None:
        """A fault outlasting max_attempts raises SourceUnavailable after exactly that many."""
        simulator.inject("http_500", 10)
        with pytest.raises(SourceUnavailable, match="HTTP 500") as info:
            await scan(settings_for(simulator, WAIQIN_MAX_ATTEMPTS=3))
        assert info.value.status == 500 and info.value.endpoint == QUERY_TASK
        assert simulator.requests[QUERY_TASK] == 3

    async def test_retry_after_honoured(self, simulator: Simulator) -> None:
        """A 429 with Retry-After: 1 delays the next attempt by at least a second."""
        simulator.inject("http_429", 1, retry_after=1)
        started = time.monotonic()
        await scan(settings_for(simulator, WAIQIN_PAGE_ROWS=100))
        assert time.monotonic() - started >= 0.95

    async def test_error_code_is_fatal(self, simulator: Simulator) -> None:
        """An unknown return_code raises SourceResponseError with code and message, no retry."""
        simulator.inject("error_code", 1, code="9001", msg="参数错误")
        with pytest.raises(SourceResponseError) as info:
            await scan(settings_for(simulator))
        assert info.value.code == "9001" and info.value.return_msg == "参数错误"
        assert "9001" in str(info.value)
        assert simulator.requests[QUERY_TASK] == 1

    async def test_auth_refusal_names_causes(self, simulator: Simulator) -> None:
        """An auth refusal raises SourceAuthError naming the three causes, without retrying."""
        failures = metric("waiqin_poller_api_auth_failures_total", endpoint=QUERY_TASK)
        simulator.inject("auth", 1)
        with pytest.raises(SourceAuthError) as info:
            await scan(settings_for(simulator))
        assert AUTH_CAUSES in str(info.value) and info.value.code == CODE_IP_REFUSED
        assert simulator.requests[QUERY_TASK] == 1
        assert metric("waiqin_poller_api_auth_failures_total", endpoint=QUERY_TASK) \
            == failures + 1

    async def test_fresh_signature_per_attempt(self, simulator: Simulator) -> None:
        """Each attempt carries a new msg_id and digest, so retries are not replays."""
        simulator.inject("http_500", 2)
        await scan(settings_for(simulator, WAIQIN_PAGE_ROWS=100))
        assert len({msg_id for _, msg_id, _ in simulator.received}) == 3


class TestPageGuards:
    async def test_repeated_page_raises(self, simulator: Simulator,
                                        waiqin_settings: WaiqinSettings) -> None:
        """A server returning page 1 for page 2 fails the scan with a clear error."""
        simulator.inject("ignore_page", 5)
        with pytest.raises(SourceResponseError, match="ignores `page`"):
            await scan(waiqin_settings)
        assert simulator.requests[QUERY_TASK] == 2

    async def test_malformed_record_passed_through(self, simulator: Simulator) -> None:
        """A malformed record is handed over raw; the client does not judge records."""
        simulator.inject("malformed_record", 1, variant="not_object")
        pages = await scan(settings_for(simulator, WAIQIN_PAGE_ROWS=100))
        assert ["not", "an", "object"] in pages[0].records
        assert len(pages[0].records) == 31


class TestSplitDays:
    async def test_split_scan_reads_same_tasks(self, simulator: Simulator,
                                               waiqin_settings: WaiqinSettings) -> None:
        """A split scan covers the same tasks as one scan, oldest sub-window first."""
        today = beijing_now().date()
        window = Window(modify_from=today - timedelta(days=6), modify_to=today)
        pages = await scan(waiqin_settings, window, split_days=2)
        starts = [p.window.modify_from for p in pages]
        assert starts == sorted(starts) and len(set(starts)) == 4
        assert sorted(ids(pages)) == sorted(ids(await scan(waiqin_settings, window)))


class TestRateLimit:
    async def test_requests_spaced(self, simulator: Simulator) -> None:
        """Four requests at 5 per second take at least (4-1)/5 seconds."""
        settings = settings_for(simulator, WAIQIN_RATE_LIMIT_PER_SECOND=5)
        started = time.monotonic()
        async with WaiqinClient(settings, **FAST) as client:
            for _ in range(4):
                await client.query_task_types(["10001"])
        assert time.monotonic() - started >= 0.55


class TestErrorMapping:
    @pytest.mark.parametrize("exc,expected", [
        (TimeoutError(), SourceUnavailable),
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), SourceUnavailable),
        (aiohttp.ConnectionTimeoutError("Connection timeout to host x"), SourceUnavailable),
        (aiohttp.ServerDisconnectedError(), SourceUnavailable),
        (aiohttp.ClientOSError(104, "reset"), SourceUnavailable),
        (aiohttp.ClientConnectionError("x"), SourceUnavailable),
        (aiohttp.ClientPayloadError("cut"), SourceUnavailable),
        (aiohttp.ClientError("x"), SourceUnavailable),
        (aiohttp.InvalidURL("http://bad"), SourceResponseError),
    ], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
    def test_each_caught_type_maps(self, exc: BaseException, expected: type) -> None:
        """Every aiohttp/timeout type the client catches becomes the matching SourceError."""
        mapped = map_transport_error(QUERY_TASK, exc)
        assert type(mapped) is expected and mapped.endpoint == QUERY_TASK

    def test_signed_path_scrubbed_from_cause(self) -> None:
        """An aiohttp error quoting the signed URL has that path redacted before chaining."""
        path = "/api/cusTask/v1/queryTask/o/20240101000000/0123abcd/uuid"
        exc = aiohttp.ConnectionTimeoutError(f"Connection timeout to host http://h{path}")
        mapped = map_transport_error(QUERY_TASK, exc, path)
        assert "0123abcd" not in str(exc) and "0123abcd" not in str(mapped)

    @pytest.mark.parametrize("status,expected", [
        (401, SourceAuthError), (403, SourceAuthError), (404, SourceResponseError),
        (429, SourceUnavailable), (502, SourceUnavailable), (503, SourceUnavailable),
    ])
    def test_http_status(self, status: int, expected: type) -> None:
        """HTTP statuses map to classes in one place: 401/403 auth, 429/5xx retriable."""
        with pytest.raises(expected) as info:
            _decode(QUERY_TASK, status, {"Retry-After": "7"}, b"")
        assert info.value.status == status
        if status == 429:
            assert info.value.retry_after_s == 7.0

    def test_response_data_shapes(self) -> None:
        """response_data as array, JSON string, empty string or null all decode to a list."""
        for data in (b'[{"a":1}]', b'"[{\\"a\\":1}]"'):
            body = b'{"return_code":"0","response_data":' + data + b"}"
            assert _decode(QUERY_TASK, 200, {}, body) == [{"a": 1}]
        for data in (b'""', b"null"):
            body = b'{"return_code":0,"response_data":' + data + b"}"
            assert _decode(QUERY_TASK, 200, {}, body) == []

    async def test_connection_refused(self, simulator: Simulator) -> None:
        """A closed port raises SourceUnavailable chained from the aiohttp error."""
        base = simulator.base_url
        await simulator.stop()
        with pytest.raises(SourceUnavailable, match="connection failed") as info:
            await scan(settings_for(simulator, base_url=base, WAIQIN_MAX_ATTEMPTS=2))
        assert isinstance(info.value.__cause__, aiohttp.ClientError)


class TestSecrets:
    async def test_appkey_and_digest_never_logged(self, simulator: Simulator) -> None:
        """Neither the appkey nor a digest appears in any log line or exception text."""
        settings = settings_for(simulator, WAIQIN_REQUEST_TIMEOUT_SECONDS=0.4,
                                WAIQIN_PAGE_ROWS=100)
        with capture_logs() as logs:
            simulator.inject("http_500", 1)
            await scan(settings)
            simulator.inject("latency", 1, ms=700)
            await scan(settings)
            simulator.inject("auth", 1)
            with pytest.raises(SourceAuthError) as info:
                await scan(settings)
        texts = [repr(e) for e in logs]
        chain: BaseException | None = info.value
        while chain is not None:
            texts.append(f"{chain!r} {chain}")
            chain = chain.__cause__ or chain.__context__
        digests = [d for _, _, d in simulator.received]
        assert len(digests) == 5 and len(logs) == 2
        for text in texts:
            assert APPKEY not in text
            assert not any(d in text for d in digests)

    async def test_repr_hides_appkey(self, simulator: Simulator) -> None:
        """Neither the settings nor the simulator repr shows the appkey."""
        assert APPKEY not in repr(settings_for(simulator)) and APPKEY not in repr(simulator)


class TestLifecycle:
    async def test_start_stop_idempotent(self, waiqin_settings: WaiqinSettings) -> None:
        """start and stop may each be called twice; stop works without start."""
        client = WaiqinClient(waiqin_settings)
        await client.stop()
        await client.start()
        await client.start()
        await client.stop()
        await client.stop()

    async def test_warns_on_cleartext_remote(self) -> None:
        """A plain-http non-loopback base logs insecure_base_url once at start."""
        settings = WaiqinSettings.model_validate(
            {"base_url": "http://example.invalid", "openid": "o", "appkey": "k"})
        with capture_logs() as logs:
            async with WaiqinClient(settings):
                pass
        assert [e["event"] for e in logs] == ["insecure_base_url"]

    async def test_quiet_on_loopback(self, waiqin_settings: WaiqinSettings) -> None:
        """The simulator's loopback http base logs no warning."""
        with capture_logs() as logs:
            async with WaiqinClient(waiqin_settings):
                pass
        assert logs == []

    async def test_error_is_source_error(self, simulator: Simulator) -> None:
        """Every error the client raises is a SourceError subclass."""
        simulator.inject("garbage", 10)
        with pytest.raises(SourceError):
            await scan(settings_for(simulator, WAIQIN_MAX_ATTEMPTS=1))
