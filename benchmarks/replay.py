"""Serve recorded queryTask responses over HTTP, in their own process: `replay.py PORT FILE`.

FILE is a pickle of a list of scans, each a list of response bodies (page 1 first). Every
request for page 1 starts the next scan (round robin), so a benchmark replays a drifting API
(each scan rendered anew) or a tidy one (one scan) without paying the simulator's rendering:
the wall clock of a scan is then the poller's own. Signatures are not checked; task types
are none.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import orjson
from aiohttp import web


def app(scans: list[list[bytes]]) -> web.Application:
    state = {"scan": -1}

    async def query_task(request: web.Request) -> web.Response:
        page = int(orjson.loads(await request.read())["page"])
        if page == 1:
            state["scan"] = (state["scan"] + 1) % len(scans)
        bodies = scans[state["scan"]]
        body = bodies[page - 1] if page <= len(bodies) else bodies[-1]
        return web.Response(body=body, content_type="application/json")

    async def query_task_type(request: web.Request) -> web.Response:
        return web.Response(body=b'{"return_code":"0","return_msg":"","response_data":[]}',
                            content_type="application/json")

    application = web.Application()
    application.router.add_post("/api/cusTask/v1/queryTask/{rest:.*}", query_task)
    application.router.add_post("/api/cusTask/v1/queryTaskType/{rest:.*}", query_task_type)
    return application


if __name__ == "__main__":
    port, path = int(sys.argv[1]), Path(sys.argv[2])
    with path.open("rb") as file:
        recorded: list[list[bytes]] = pickle.load(file)  # the benchmark's own file
    web.run_app(app(recorded), host="127.0.0.1", port=port, print=None)
