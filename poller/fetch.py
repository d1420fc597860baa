"""WaiqinClient: signed, rate-limited, retried calls to the Waiqin365 task API, paged by window."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import aiohttp
import orjson
import structlog
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from poller import metrics, wire
from poller import window as windows
from poller.config import WaiqinSettings
from poller.errors import (
    AUTH_CAUSES,
    PollerError,
    SourceAuthError,
    SourceError,
    SourceResponseError,
    SourceUnavailable,
)
from poller.models import Window, beijing_now
from poller.signing import beijing_timestamp, digest

log = structlog.get_logger(__name__)

# Endpoint names: metric label values and what logs and errors name instead of the signed URL.
QUERY_TASK: Final = "queryTask"
QUERY_TASK_TYPE: Final = "queryTaskType"
PATHS: Final = {
    QUERY_TASK: "/api/cusTask/v1/queryTask",
    QUERY_TASK_TYPE: "/api/cusTask/v1/queryTaskType",
}

# return_code values. The vendor documents only "0" (success); the others are the codes this
# project assumes and the simulator emits (docs/simulator.md). An unknown non-zero code is fatal.
RETURN_OK: Final = "0"
CODE_BUSY: Final = "1000"  # service busy / maintenance: try again
CODE_BAD_OPENID: Final = "1001"  # openid unknown or disabled
CODE_BAD_DIGEST: Final = "1002"  # digest does not match md5(body|appkey|timestamp)
CODE_STALE_TIMESTAMP: Final = "1003"  # timestamp more than 10 minutes off Beijing time
CODE_IP_REFUSED: Final = "1004"  # caller IP not on the openid's allow-list
CODE_API_NOT_GRANTED: Final = "1005"  # this API is not granted to the openid
CODE_RATE_LIMITED: Final = "1006"  # too many requests: try again
CODE_BAD_PARAMS: Final = "2001"  # malformed body (dates, page, rows > 1000)
AUTH_CODES: Final = frozenset(
    {CODE_BAD_OPENID, CODE_BAD_DIGEST, CODE_STALE_TIMESTAMP, CODE_IP_REFUSED, CODE_API_NOT_GRANTED}
)
TRANSIENT_CODES: Final = frozenset({CODE_BUSY, CODE_RATE_LIMITED})

# Retry-After values above this are capped: a bogus "86400" must not park the daemon for a day.
RETRY_AFTER_MAX_S: Final = 300.0
# Waiqin365's own cap on rows per page.
MAX_ROWS: Final = 1000
JSON_CONTENT_TYPE: Final = "application/json;charset=utf-8"


@dataclass(frozen=True, slots=True)
class Page:
    """One queryTask page: records exactly as decoded from the response, possibly malformed
    (a `wire.WireRecords` parses each one when it is first read).

    `is_last` says the page was shorter than the rows asked for: the scan's end (the API gives
    no total count).
    """

    window: Window
    number: int
    records: Sequence[Any]
    is_last: bool = False


class WaiqinClient:
    """The Waiqin365 API client: one pooled session, signing, rate limit, retries, paging.

    aiohttp exceptions never leave this class: they become SourceUnavailable (retriable),
    SourceAuthError or SourceResponseError (fatal) after `settings.max_attempts` attempts.
    Neither the appkey nor the signed URL appears in a log line or an exception message.
    """

    def __init__(
        self,
        settings: WaiqinSettings,
        *,
        clock: Callable[[], datetime] = beijing_now,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        # Capacity one, refilled at the configured rate: no burst at start, so N requests take at
        # least (N-1)/rate seconds, and a rate below 1/s works (AsyncLimiter(0.5, 1) never admits).
        self._limiter = AsyncLimiter(1, 1 / settings.rate_limit_per_s)
        self._session: aiohttp.ClientSession | None = None
        # HTTP requests sent since start, by endpoint (every attempt: each counts against the
        # vendor's quota); the loop keeps the daily totals in the store.
        self.requests: Counter[str] = Counter()

    async def start(self) -> None:
        """Open the pooled session; a second call does nothing."""
        if self._session is not None:
            return
        if self._settings.is_cleartext_remote:
            log.warning("insecure_base_url", reason="plain http to a non-loopback host: the "
                        "digest and all task data travel in clear; use https")
        # ssl=True: certificates are always verified, there is no switch to turn that off.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_s),
            connector=aiohttp.TCPConnector(ssl=True, limit=8),
            raise_for_status=False,
        )

    async def stop(self) -> None:
        """Close the session; safe to call twice or after a failed start."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WaiqinClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the two endpoints --------------------------------------------------------------------

    async def iter_pages(
        self, window: Window, *, split_days: int | None = None, start_page: int = 1,
        max_pages: int | None = None,
    ) -> AsyncGenerator[Page, None]:
        """Yield the queryTask pages of `window`, from `start_page` on.

        A page shorter than `rows` (or empty) is the last one: the API returns no total count.
        With `max_pages`, no more than that many pages are requested (a scan read over several
        cycles resumes with `start_page`). With `split_days`, a window with both modify bounds is
        scanned as consecutive sub-windows of at most that many days, oldest first.
        Raises SourceResponseError when a full page repeats the previous page's task_ids.
        """
        for sub in windows.split(window, split_days) if split_days else [window]:
            async for page in self._scan(sub, start_page, max_pages):
                yield page

    async def query_task_types(self, type_ids: Sequence[str]) -> list[Any]:
        """Task type records for `type_ids`, exactly as decoded (raw, possibly malformed)."""
        return list(await self.call(QUERY_TASK_TYPE, {"type_ids": [str(t) for t in type_ids]}))

    async def _scan(self, window: Window, start_page: int, max_pages: int | None
                    ) -> AsyncGenerator[Page, None]:
        rows = min(self._settings.page_rows, MAX_ROWS)  # Waiqin365 caps rows at 1000
        previous: Sequence[Any] | None = None
        number = start_page
        last = None if max_pages is None else start_page + max_pages - 1
        # Read one page ahead: the next request runs while the caller publishes and commits
        # this one, so a cycle costs max(fetch, process) per page, not their sum. Only the
        # fetch is early; pages still reach the caller, and are committed, in order.
        ahead = self._request_page(window, number, rows)
        try:
            while True:
                records = await ahead
                full = len(records) >= rows
                if full:
                    ids = _task_ids(records)
                    if ids == previous:
                        raise SourceResponseError(
                            f"queryTask page {number} repeats page {number - 1} exactly "
                            f"({len(records)} identical task_ids): the server ignores `page`; "
                            "stopping the scan instead of looping forever",
                            endpoint=QUERY_TASK,
                        )
                    previous = ids
                    if last is None or number < last:
                        ahead = self._request_page(window, number + 1, rows)
                yield Page(window, number, records, is_last=not full)
                if not full or number == last:
                    return
                number += 1
        finally:
            # The caller stopped early (error, shutdown): drop the read-ahead, and read its
            # outcome so a failure of it is not reported as never retrieved.
            ahead.cancel()
            ahead.add_done_callback(_retrieve)

    def _request_page(self, window: Window, number: int, rows: int) -> asyncio.Task[Sequence[Any]]:
        return asyncio.create_task(self.call(QUERY_TASK, window.body(number, rows)),
                                   name=f"queryTask page {number}")

    # --- one logical request, retried ----------------------------------------------------------

    async def call(self, endpoint: str, payload: dict[str, Any]) -> Sequence[Any]:
        """POST `payload` to `endpoint` and return response_data's records, retrying transients.

        The body is serialised once; every attempt signs it afresh (new timestamp, digest and
        msg_id). Raises the last SourceError once retries are exhausted or the error is fatal.
        """
        body = orjson.dumps(payload)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, PollerError) and exc.retriable),
            before_sleep=lambda state: _log_retry(endpoint, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(endpoint, body)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(multiplier=self._backoff_base_s, max=self._backoff_max_s)
        delay = float(backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, SourceUnavailable) and exc.retry_after_s is not None:
            # The server said when to come back: never earlier than that.
            delay = max(delay, min(exc.retry_after_s, RETRY_AFTER_MAX_S))
        return delay

    async def _attempt(self, endpoint: str, body: bytes) -> Sequence[Any]:
        session = self._session
        if session is None:
            raise RuntimeError("WaiqinClient.start() was not called")  # a bug, not a condition
        await self._limiter.acquire()
        self.requests[endpoint] += 1
        path = self._signed_path(endpoint, body)
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            async with session.post(
                self._settings.base_url + path, data=body,
                headers={"Content-Type": JSON_CONTENT_TYPE},
            ) as response:
                metrics.API_CONNECTED.set(1)  # an HTTP answer arrived, whatever it says
                # Only a 200 has a body worth reading; leaving the block unread closes the connection.
                raw = await _read_body(endpoint, response, self._settings.max_response_bytes) \
                    if response.status == 200 else b""
                result = _decode(endpoint, response.status, response.headers, raw)
            outcome = "ok"
            return result
        except SourceError as exc:
            outcome = _outcome(exc)
            if isinstance(exc, SourceAuthError):
                metrics.API_AUTH_FAILURES.labels(endpoint=endpoint).inc()
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.API_CONNECTED.set(0)
            mapped = map_transport_error(endpoint, exc, path)
            outcome = _outcome(mapped)
            raise mapped from exc
        finally:
            metrics.API_REQUESTS.labels(endpoint=endpoint, outcome=outcome).inc()
            metrics.API_LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    def _signed_path(self, endpoint: str, body: bytes) -> str:
        timestamp = beijing_timestamp(self._clock())
        signature = digest(body, self._settings.appkey.get_secret_value(), timestamp)
        # msg_id: a fresh UUID per attempt; the server echoes it back.
        return f"{PATHS[endpoint]}/{self._settings.openid}/{timestamp}/{signature}/{uuid.uuid4()}"


# --- pure helpers: windows, decoding, error mapping --------------------------------------------


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _read_body(endpoint: str, response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of `response`, refusing one larger than `limit` bytes before reading it all.

    Content-Length settles it up front; a body without one (chunked) or one that decompresses
    past it is cut off while reading. Leaving the response unread closes its connection, so
    the rest never reaches memory. Raises SourceResponseError naming the limit and its setting.
    """
    announced = response.content_length
    if announced is not None and announced > limit:
        raise _too_large(endpoint, limit, f"Content-Length is {announced} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(endpoint, limit, f"more than {limit} bytes arrived")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(endpoint: str, limit: int, detail: str) -> SourceResponseError:
    return SourceResponseError(
        f"{endpoint} response exceeds WAIQIN_MAX_RESPONSE_BYTES={limit} ({detail}); it was not "
        "read on. Raise WAIQIN_MAX_RESPONSE_BYTES or lower WAIQIN_PAGE_ROWS", endpoint=endpoint,
        status=200)


def _task_ids(records: Sequence[Any]) -> list[Any]:
    # The only per-record work in the client: enough to spot a server that ignores `page`.
    if isinstance(records, wire.WireRecords):
        return records.raw_ids
    return [r.get("task_id") if isinstance(r, dict) else r for r in records]


def _decode(endpoint: str, status: int, headers: Any, raw: bytes) -> Sequence[Any]:
    """Map one HTTP response to response_data, or raise the matching SourceError."""
    if status in (401, 403):
        raise SourceAuthError(f"{endpoint} refused with HTTP {status}: {AUTH_CAUSES}",
                              endpoint=endpoint, status=status)
    if status == 429 or status >= 500:
        raise SourceUnavailable(f"{endpoint} answered HTTP {status}", endpoint=endpoint,
                                status=status, retry_after_s=_retry_after(headers))
    if status != 200:
        raise SourceResponseError(
            f"{endpoint} answered HTTP {status}, expected 200 (is WAIQIN_BASE_URL right?)",
            endpoint=endpoint, status=status)
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        envelope = None
    if not isinstance(envelope, dict) or "return_code" not in envelope:
        # Retriable on purpose: gateways and load balancers in front of the API answer with
        # HTML maintenance pages or truncated bodies while the service itself is fine.
        raise SourceUnavailable(
            f"{endpoint} answered HTTP 200 with a body that is not the JSON envelope "
            f"({len(raw)} bytes, starting {raw[:40]!r})", endpoint=endpoint, status=status)
    code = str(envelope["return_code"])  # drift: the code may arrive as a number
    if code != RETURN_OK:
        raise _code_error(endpoint, code, str(envelope.get("return_msg") or ""))
    return _response_data(endpoint, envelope.get("response_data"))


def _response_data(endpoint: str, data: Any) -> Sequence[Any]:
    # Waiqin365 quirk: response_data is sometimes a JSON array, sometimes a string holding one.
    if isinstance(data, str):
        if not data.strip():
            return []
        records = wire.split(endpoint, data) if endpoint == QUERY_TASK else None
        if records is not None:
            return records
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SourceResponseError(
                f"{endpoint} response_data is a string but not JSON: {data[:40]!r}",
                endpoint=endpoint) from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise SourceResponseError(
            f"{endpoint} response_data: expected a JSON array, got {type(data).__name__}",
            endpoint=endpoint)
    return data


def _code_error(endpoint: str, code: str, message: str) -> SourceError:
    """The typed error for a non-zero return_code; carries `code` and the vendor's message."""
    text = f"{endpoint} returned return_code {code!r}: {message!r}"
    if code in AUTH_CODES:
        hint = " (or this host's clock is more than 10 minutes off)" \
            if code == CODE_STALE_TIMESTAMP else ""
        return SourceAuthError(f"{text}; {AUTH_CAUSES}{hint}",
                               endpoint=endpoint, code=code, return_msg=message)
    if code in TRANSIENT_CODES:
        return SourceUnavailable(text, endpoint=endpoint, code=code, return_msg=message)
    return SourceResponseError(text, endpoint=endpoint, code=code, return_msg=message)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP-date Retry-After: fall back to our own backoff


def map_transport_error(endpoint: str, exc: BaseException, path: str = "") -> SourceError:
    """The SourceError for an aiohttp/timeout exception, with the signed path scrubbed from it.

    Some aiohttp errors (ConnectionTimeoutError, InvalidURL) put the full URL, digest included,
    into their text; since the original is chained as __cause__, its args are redacted here.
    """
    _redact(exc, path, endpoint)
    kind = type(exc).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return SourceResponseError(f"{endpoint}: invalid URL ({kind}); check WAIQIN_BASE_URL",
                                   endpoint=endpoint)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return SourceUnavailable(f"{endpoint}: request timed out ({kind})", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return SourceUnavailable(f"{endpoint}: connection failed ({kind})", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return SourceUnavailable(f"{endpoint}: response body cut short ({kind})",
                                 endpoint=endpoint)
    return SourceUnavailable(f"{endpoint}: HTTP client error ({kind})", endpoint=endpoint)


def _redact(exc: BaseException, path: str, endpoint: str) -> None:
    if not path:
        return
    exc.args = tuple(
        arg.replace(path, f"/<signed {endpoint} path>") if isinstance(arg, str) else arg
        for arg in exc.args
    )


def _outcome(exc: SourceError) -> str:
    if isinstance(exc, SourceAuthError):
        return "auth"
    return "unavailable" if exc.retriable else "error"


def _log_retry(endpoint: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    metrics.API_RETRIES.labels(endpoint=endpoint).inc()
    log.warning("api_retry", endpoint=endpoint, attempt=state.attempt_number,
                delay=round(delay, 3), error=str(exc))
