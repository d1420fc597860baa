"""The simulated Waiqin365 OpenAPI: signed queryTask/queryTaskType endpoints over aiohttp."""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from poller.fetch import (
    CODE_API_NOT_GRANTED,
    CODE_BAD_DIGEST,
    CODE_BAD_OPENID,
    CODE_BAD_PARAMS,
    CODE_IP_REFUSED,
    CODE_STALE_TIMESTAMP,
    MAX_ROWS,
    QUERY_TASK,
    QUERY_TASK_TYPE,
    RETURN_OK,
)
from poller.models import BEIJING, beijing_now
from poller.signing import TIMESTAMP_FORMAT, digest
from poller.simulator import admin
from poller.simulator.churn import HONEST, Churn, ChurnMix
from poller.simulator.faults import MALFORMED_VARIANTS, Fault, FaultPlan
from poller.simulator.index import DayFilters
from poller.simulator.partial import PartialSchedule, keeper
from poller.simulator.render import Renderer
from poller.simulator.state import TaskStore

log = structlog.get_logger(__name__)

# The real service refuses a timestamp more than 10 minutes away from its Beijing clock.
MAX_CLOCK_SKEW: Final = timedelta(minutes=10)
DEFAULT_ROWS: Final = 20
GARBAGE_BODY: Final = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class RefusedError(Exception):
    """A request the simulated service answers with a non-zero return_code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Simulator:
    """A fake Waiqin365 with real signing, day filters, offset paging, faults and churn.

    Usable in-process (tests, benchmarks: call the mutation methods directly) and over HTTP
    (the admin API under /admin/, see docs/simulator.md). The appkey is never logged.

    The vendor's bad habits are off unless asked for: `mix` makes churn silent, stamped in the
    past, hard-deleting or reverting; `late_feedback` seeds feedback dated after modify_time;
    `partial` serves partial data in recurring episodes (and the `partial_pages` fault once).
    """

    def __init__(self, openid: str, appkey: str, *, seed: int = 1, tasks: int = 200,
                 days: int = 30, types: int = 8, clock: Callable[[], datetime] = beijing_now,
                 drift: bool = True, data_as_string: bool = True,
                 grant_task_types: bool = True, mix: ChurnMix = HONEST,
                 late_feedback: float = 0.0, partial: PartialSchedule | None = None) -> None:
        self.openid = openid
        self._appkey = appkey
        self.clock = clock
        self.seed = seed
        self.store = TaskStore(seed=seed, tasks=tasks, days=days, types=types, clock=clock,
                               late_feedback=late_feedback)
        self.faults = FaultPlan()
        self.churn = Churn(self.store, seed, mix)
        self.partial = partial
        self._started = time.monotonic()  # partial episodes count from start()
        self.renderer = Renderer(seed, drift=drift)
        self.data_as_string = data_as_string
        self.grant_task_types = grant_task_types
        self.requests: Counter[str] = Counter()  # API requests received, by endpoint
        self.served: deque[list[Any]] = deque(maxlen=64)  # records of recent answers, newest last
        # (endpoint, msg_id, digest) of recent API requests, newest last: lets tests check that
        # every attempt is signed afresh and that no digest leaks. Kept in memory, never logged.
        self.received: deque[tuple[str, str, str]] = deque(maxlen=256)
        self._rng = random.Random(seed ^ 0xFA17)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        # In-process mutations: each returns the task (or type) after the change.
        self.create_task = self.store.create_task
        self.add_feedback = self.store.add_feedback
        self.set_task_status = self.store.set_task_status
        self.reassign = self.store.reassign
        self.set_deadline = self.store.set_deadline
        self.delete = self.store.delete
        self.restore = self.store.restore
        self.update_fields = self.store.update_fields
        self.revert = self.store.revert
        self.hard_delete = self.store.hard_delete
        self.reappear = self.store.reappear
        self.update_type = self.store.update_type
        self.get_task = self.store.get

    def __repr__(self) -> str:
        # The appkey is left out on purpose.
        return (f"Simulator(openid={self.openid!r}, tasks={len(self.store.tasks)}, "
                f"url={self._base_url!r})")

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """Every mutation so far, oldest first: {seq, task_id, kind, at, modify_time,
        modify_time_moved, detail} (see state.visible_to_window)."""
        return self.store.ledger

    @property
    def base_url(self) -> str:
        """The http base URL to give WAIQIN_BASE_URL; only valid after start()."""
        if self._base_url is None:
            raise RuntimeError("Simulator.start() was not called")
        return self._base_url

    def inject(self, kind: str, count: int = 1, endpoint: str | None = None,
               **params: Any) -> Fault:
        """Arm a fault (see faults.KINDS) for the next `count` requests, or with `seconds=`
        for every request during that long."""
        return self.faults.add(kind, count, endpoint, **params)

    async def start_churn(self, per_s: float, mix: ChurnMix | None = None) -> None:
        """Mutate `per_s` random tasks per second (with `mix` when given) until stop_churn()
        or stop()."""
        await self.churn.start(per_s, mix)

    async def stop_churn(self) -> None:
        """Stop churning; idempotent."""
        await self.churn.stop()

    def app(self) -> web.Application:
        """The aiohttp application: the two API endpoints and the admin API."""
        application = web.Application()
        application.router.add_post(
            "/api/cusTask/v1/{endpoint}/{openid}/{timestamp}/{digest}/{msg_id}", self._api)
        application.add_routes(admin.routes(self))
        return application

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            return self.base_url
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._started = time.monotonic()
        bound = runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self._base_url = f"http://{shown}:{bound}"
        return self._base_url

    async def stop(self) -> None:
        """Stop churn and the server; idempotent."""
        await self.churn.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- the API -------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        if endpoint not in (QUERY_TASK, QUERY_TASK_TYPE):
            raise web.HTTPNotFound()
        self.requests[endpoint] += 1
        msg_id = request.match_info["msg_id"]
        self.received.append((endpoint, msg_id, request.match_info["digest"]))
        faults = self.faults.take(endpoint)
        if "latency" in faults:
            await asyncio.sleep(float(faults["latency"].params.get("ms", 500)) / 1000)
        transport = self._transport_fault(faults)
        if transport is not None:
            return transport
        body = await request.read()
        try:
            self._check(request, body, endpoint)
            if "auth" in faults:
                raise RefusedError(CODE_IP_REFUSED, "调用方IP不在白名单中 (caller IP not allowed)")
            if "error_code" in faults:
                params = faults["error_code"].params
                raise RefusedError(str(params.get("code", "9001")),
                                   str(params.get("msg", "系统内部错误 (injected)")))
            payload = _payload(body)
            if endpoint == QUERY_TASK:
                records = self._query_task(payload, faults)
            else:
                records = self._query_task_type(payload)
        except RefusedError as refused:
            return _envelope(msg_id, refused.code, refused.message, "")
        self.served.append(records)
        data: Any = _dumps(records).decode() if self.data_as_string else records
        return _envelope(msg_id, RETURN_OK, "成功", data)

    def _transport_fault(self, faults: dict[str, Fault]) -> web.Response | None:
        if "http_500" in faults:
            return web.Response(status=500, text="Internal Server Error")
        if "http_429" in faults:
            retry_after = faults["http_429"].params.get("retry_after", 1)
            return web.Response(status=429, text="Too Many Requests",
                                headers={"Retry-After": str(retry_after)})
        if "garbage" in faults:
            return web.Response(status=200, body=GARBAGE_BODY, content_type="text/html")
        return None

    def _check(self, request: web.Request, body: bytes, endpoint: str) -> None:
        """Refuse what the real service refuses: openid, timestamp skew, digest, grants."""
        info = request.match_info
        if info["openid"] != self.openid:
            raise RefusedError(CODE_BAD_OPENID, "openid不存在或已停用 (unknown openid)")
        timestamp = info["timestamp"]
        try:
            sent = datetime.strptime(timestamp, TIMESTAMP_FORMAT).replace(tzinfo=BEIJING)
        except ValueError:
            raise RefusedError(CODE_STALE_TIMESTAMP,
                               "时间戳格式错误 (timestamp not yyyyMMddHHmmss)") from None
        if abs(self.clock() - sent) > MAX_CLOCK_SKEW:
            raise RefusedError(CODE_STALE_TIMESTAMP,
                               "时间戳已过期 (timestamp more than 10 minutes off Beijing time)")
        expected = digest(body, self._appkey, timestamp)
        if not hmac.compare_digest(expected, info["digest"].lower()):
            raise RefusedError(CODE_BAD_DIGEST, "签名验证失败 (digest mismatch)")
        if endpoint == QUERY_TASK_TYPE and not self.grant_task_types:
            raise RefusedError(CODE_API_NOT_GRANTED, "接口未授权 (API not granted to this openid)")

    def _query_task(self, payload: dict[str, Any], faults: dict[str, Fault]) -> list[Any]:
        page = _int_param(payload, "page", 1)
        rows = _int_param(payload, "rows", DEFAULT_ROWS)
        if page < 1 or not 1 <= rows <= MAX_ROWS:
            raise RefusedError(CODE_BAD_PARAMS, f"page >= 1 and 1 <= rows <= {MAX_ROWS} required")
        filters = DayFilters(
            modify_from=_date_param(payload, "modify_date_from"),
            modify_to=_date_param(payload, "modify_date_to"),
            create_from=_date_param(payload, "create_date_from"),
            create_to=_date_param(payload, "create_date_to"),
        )
        if "ignore_page" in faults:
            page = 1  # a broken deployment that ignores `page`
        tasks = self.store.page(filters, offset=(page - 1) * rows, rows=rows,
                                keep=self._partial_keeper(faults))
        records: list[Any] = [self.renderer.task(t) for t in tasks]
        if "malformed_record" in faults:
            records.insert(self._rng.randint(0, len(records)),
                           self._malformed(faults["malformed_record"]))
        return records

    def _partial_keeper(self, faults: dict[str, Fault]) -> Callable[[str], bool] | None:
        """Which tasks this answer keeps while partial data is being served, else None."""
        if "partial_pages" in faults:
            fault = faults["partial_pages"]
            return keeper(self.seed, f"fault{fault.serial}", fault.params["fraction"])
        if self.partial is not None:
            episode = self.partial.episode(time.monotonic() - self._started)
            if episode is not None:
                return keeper(self.seed, f"episode{episode}", self.partial.fraction)
        return None

    def _malformed(self, fault: Fault) -> Any:
        # One fault, one bad record: a real bad row comes back unchanged on every scan, and the
        # poller must dead-letter it once per distinct content, not once per cycle.
        if "record" not in fault.params:
            fault.params["record"] = self._new_malformed(fault)
        return fault.params["record"]

    def _new_malformed(self, fault: Fault) -> Any:
        variant = fault.params.get("variant") or self._rng.choice(MALFORMED_VARIANTS)
        if variant == "not_object":
            return ["not", "an", "object"]
        if variant == "missing_task_id":
            return {"task_content": "没有任务编号的记录", "modify_time": "2024-01-01 00:00"}
        if variant == "receivers_not_list":
            return {"task_id": f"bad-{self._rng.randrange(10**6)}", "receivers": "张伟",
                    "modify_time": "2024-01-01 00:00"}
        raise ValueError(f"unknown malformed_record variant {variant!r}; "
                         f"expected one of {MALFORMED_VARIANTS}")

    def _query_task_type(self, payload: dict[str, Any]) -> list[Any]:
        ids = payload.get("type_ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RefusedError(CODE_BAD_PARAMS, "type_ids must be a list of strings")
        wanted = ids or list(self.store.types)  # an empty list asks for every type
        return [self.renderer.task_type(self.store.types[i]) for i in wanted
                if i in self.store.types]


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RefusedError(CODE_BAD_PARAMS, "请求体不是JSON (body is not JSON)") from None
    if not isinstance(payload, dict):
        raise RefusedError(CODE_BAD_PARAMS, "请求体必须是JSON对象 (body must be an object)")
    return payload


def _int_param(payload: dict[str, Any], key: str, default: int) -> int:
    value = payload.get(key)
    if value is None:
        return default
    # Waiqin365 documents every body field as a string; be as strict as the contract.
    if not isinstance(value, str) or not value.isdigit():
        raise RefusedError(CODE_BAD_PARAMS, f"{key} must be a string of digits, got {value!r}")
    return int(value)


def _date_param(payload: dict[str, Any], key: str) -> date | None:
    value = payload.get(key)
    if value in (None, ""):
        return None
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise RefusedError(CODE_BAD_PARAMS, f"{key} must be yyyy-MM-dd, got {value!r}") from None


def _dumps(value: Any) -> bytes:
    """JSON bytes of `value`, however deeply nested."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # orjson refuses nesting deeper than 254 levels; a real record can be deeper, and the
        # poller must get to dead-letter it rather than see the server fail.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _envelope(msg_id: str, code: str, message: str, data: Any) -> web.Response:
    body = _dumps({"return_code": code, "return_msg": message, "msg_id": msg_id,
                   "response_data": data})
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def run_simulator(*, host: str, port: int, openid: str, appkey: str, tasks: int,
                        days: int, seed: int, churn_per_s: float, drift: bool = True,
                        mix: ChurnMix = HONEST, late_feedback: float = 0.0,
                        partial: PartialSchedule | None = None) -> None:
    """Serve a simulator until cancelled (the `waiqin-poller simulator` command)."""
    sim = Simulator(openid, appkey, seed=seed, tasks=tasks, days=days, drift=drift, mix=mix,
                    late_feedback=late_feedback, partial=partial)
    base_url = await sim.start(host, port)
    try:
        if churn_per_s > 0:
            await sim.churn.start(churn_per_s)
        log.info("simulator_started", base_url=base_url, admin_url=f"{base_url}/admin/",
                 openid=openid, tasks=len(sim.store.tasks), churn_per_s=churn_per_s,
                 churn_mix=mix.describe(), late_feedback=late_feedback,
                 partial=partial.describe() if partial else None)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await sim.stop()
