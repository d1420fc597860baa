"""The simulator's admin HTTP API (JSON under /admin/): mutate tasks, read the ledger, faults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from poller.simulator.churn import ChurnMix
from poller.simulator.faults import KINDS

if TYPE_CHECKING:
    from poller.simulator.server import Simulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(sim: Simulator) -> list[web.RouteDef]:
    """Every admin route, bound to `sim`. Unauthenticated: bind the simulator to loopback."""
    api = _Admin(sim)
    table = [
        web.get("/admin/", _guarded(api.summary)),
        web.post("/admin/tasks", _guarded(api.create)),
        web.get("/admin/tasks/{task_id}", _guarded(api.get_task)),
        web.patch("/admin/tasks/{task_id}", _guarded(api.task_action("update"))),
        web.put("/admin/types/{type_id}", _guarded(api.put_type)),
        web.get("/admin/ledger", _guarded(api.ledger)),
        web.get("/admin/faults", _guarded(api.list_faults)),
        web.post("/admin/faults", _guarded(api.add_fault)),
        web.delete("/admin/faults", _guarded(api.clear_faults)),
        web.get("/admin/churn", _guarded(api.churn)),
        web.post("/admin/churn", _guarded(api.start_churn)),
        web.delete("/admin/churn", _guarded(api.stop_churn)),
        web.post("/admin/grants", _guarded(api.grants)),
    ]
    table += [web.post(f"/admin/tasks/{{task_id}}/{name}", _guarded(api.task_action(name)))
              for name in ("feedback", "status", "reassign", "deadline", "delete", "restore",
                           "revert", "hard_delete", "reappear")]
    return table


class _Admin:
    """The admin handlers of one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        # Each action gets the task id, the JSON body and the stamp options of the query string.
        self.actions: dict[str, Callable[[str, dict[str, Any], dict[str, Any]],
                                         dict[str, Any]]] = {
            "feedback": lambda t, b, s: sim.add_feedback(t, b.get("content"), b.get("visit_id"),
                                                         **s),
            "status": lambda t, b, s: sim.set_task_status(t, int(b.get("task_status", -1)), **s),
            "reassign": lambda t, b, s: sim.reassign(t, b.get("receivers"), **s),
            "deadline": lambda t, b, s: sim.set_deadline(t, b.get("feedback_deadline"), **s),
            "delete": lambda t, b, s: sim.delete(t, **s),
            "restore": lambda t, b, s: sim.restore(t, **s),
            "update": lambda t, b, s: sim.update_fields(t, **s, **b),
            "revert": lambda t, b, s: sim.revert(t, **s),
            "hard_delete": lambda t, b, s: sim.hard_delete(t, **_no_stamp(s)),
            "reappear": lambda t, b, s: sim.reappear(t, **s, **b),
        }

    def task_action(self, name: str) -> Handler:
        action = self.actions[name]

        async def handle(request: web.Request) -> web.StreamResponse:
            stamp = _stamp_options(request.query, self.sim)
            return _json(action(request.match_info["task_id"], await _body(request), stamp))
        return handle

    async def create(self, request: web.Request) -> web.StreamResponse:
        return _json(self.sim.create_task(**await _body(request)), status=201)

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        return _json(self.sim.get_task(request.match_info["task_id"]))

    async def summary(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        return _json({"tasks": len(sim.store.tasks), "types": len(sim.store.types),
                      "hard_deleted": len(sim.store.removed),
                      "requests": dict(sim.requests), "ledger": len(sim.ledger),
                      "churn_per_s": sim.churn.per_s, "churn_mix": sim.churn.mix.describe(),
                      "partial": sim.partial.describe() if sim.partial else None,
                      "grant_task_types": sim.grant_task_types})

    async def put_type(self, request: web.Request) -> web.StreamResponse:
        return _json(self.sim.update_type(request.match_info["type_id"], **await _body(request)))

    async def ledger(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("since", "0"))
        return _json([entry for entry in self.sim.ledger if entry["seq"] > since])

    async def list_faults(self, request: web.Request) -> web.StreamResponse:
        return _json({"armed": self.sim.faults.describe(), "kinds": KINDS})

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        kind = str(body.pop("kind", ""))
        count = int(body.pop("count", 1))
        endpoint = body.pop("endpoint", None)
        return _json(self.sim.inject(kind, count, endpoint, **body).describe(), status=201)

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.sim.faults.clear()
        return _json({"armed": []})

    async def churn(self, request: web.Request) -> web.StreamResponse:
        return _json({"churn_per_s": self.sim.churn.per_s, "mix": self.sim.churn.mix.describe()})

    async def start_churn(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        per_s = float(body.pop("per_s", 1))
        # The habits not given keep their current values, so one can be switched at a time.
        mix = ChurnMix.from_mapping({**self.sim.churn.mix.describe(), **body})
        await self.sim.churn.start(per_s, mix)
        return await self.churn(request)

    async def stop_churn(self, request: web.Request) -> web.StreamResponse:
        await self.sim.churn.stop()
        return _json({"churn_per_s": 0, "mix": self.sim.churn.mix.describe()})

    async def grants(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if "queryTaskType" in body:
            self.sim.grant_task_types = bool(body["queryTaskType"])
        return _json({"queryTask": True, "queryTaskType": self.sim.grant_task_types})


def _stamp_options(query: Mapping[str, str], sim: Simulator) -> dict[str, Any]:
    """touch / stamp_at from `?touch=false`, `?stamp_at=yyyy-MM-dd HH:mm` or
    `?stamp_days_ago=N` (N may be fractional); {} when none is given."""
    unknown = sorted(set(query) - {"touch", "stamp_at", "stamp_days_ago"})
    if unknown:
        raise ValueError(f"unknown query parameter(s) {unknown}; expected touch, stamp_at or "
                         f"stamp_days_ago")
    options: dict[str, Any] = {}
    if "touch" in query:
        if query["touch"].lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"touch must be true or false, got {query['touch']!r}")
        options["touch"] = query["touch"].lower() in ("true", "1")
    if "stamp_at" in query:
        options["stamp_at"] = query["stamp_at"]
    if "stamp_days_ago" in query:
        if "stamp_at" in options:
            raise ValueError("give stamp_at or stamp_days_ago, not both")
        options["stamp_at"] = sim.clock() - timedelta(days=float(query["stamp_days_ago"]))
    return options


def _no_stamp(options: dict[str, Any]) -> dict[str, Any]:
    if options:
        raise ValueError("a hard delete leaves no trace: it takes no touch or stamp option")
    return options


def _guarded(handler: Handler) -> Handler:
    """Map caller mistakes to 404/400 JSON answers instead of 500s."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return _json({"error": f"not found: {exc.args[0] if exc.args else exc}"}, status=404)
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
    return handle


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object body, got {raw[:40]!r}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object body, got {type(body).__name__}")
    return body


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
