"""The API's cluster routes: status, role history, policy, failover, events, metrics, spec.

Handlers are functions of the API's narrow views (``hasyncd.daemon.views``)
and the request, named by ``hasyncd.daemon.api.ROUTES``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from importlib import resources

import yaml
from aiohttp import web

from hasyncd.daemon.apilimits import Budget
from hasyncd.daemon.bodies import last_event_id
from hasyncd.daemon.eventhub import SHUTDOWN
from hasyncd.daemon.metrics import CONTENT_TYPE
from hasyncd.daemon.views import ApiViews
from hasyncd.errors import ApiError
from hasyncd.policy import policy_table

# Each API listener's connection budget, set by hasyncd.daemon.api.Api at start.
API_BUDGETS = web.AppKey("api_budgets", dict[str, Budget])
SSE_KEEPALIVE = 15.0  # seconds between comment lines on an idle event stream
# Events written in one go when a burst is queued: a few hundred KiB at most,
# so one slow reader's write never holds much memory per stream.
SSE_CHUNK_EVENTS = 1024
# A manual failover waits for the handover this much beyond its own timeout
# (the peer's promotion and its first heartbeat back).
FAILOVER_SLACK_S = 1.0


async def status(v: ApiViews, request: web.Request) -> web.Response:
    st = v.cluster.status(v.clock())
    hooks = v.hooks
    st["hooks"] = {"queued": hooks.queued, "running": hooks.running, "recent": hooks.recent()}
    st["sync_mode"] = v.config().sync.mode
    budgets = request.app.get(API_BUDGETS, {})
    st["api_connections"] = {name: b.as_json() for name, b in budgets.items()}
    return web.json_response(st)


async def history(v: ApiViews, request: web.Request) -> web.Response:
    return web.json_response({"node": v.config().node.name, "history": v.cluster.history()})


async def policy(v: ApiViews, request: web.Request) -> web.Response:
    return web.json_response({"policy": policy_table()})


async def failover(v: ApiViews, request: web.Request) -> web.Response:
    target = v.cluster.request_failover(v.clock())
    timeout = v.config().promotion.handover_timeout_ms / 1000.0 + FAILOVER_SLACK_S
    if not await v.cluster.wait_not_primary(timeout):
        raise ApiError(
            504, "handover_timeout", f"{target} did not take over in time", target=target
        )
    return web.json_response({"new_primary": target, "epoch": v.cluster.epoch()})


async def openapi(v: ApiViews, request: web.Request) -> web.Response:
    return web.Response(body=openapi_json(), content_type="application/json")


async def metrics(v: ApiViews, request: web.Request) -> web.Response:
    return web.Response(body=v.metrics(), headers={"Content-Type": CONTENT_TYPE})


async def events(v: ApiViews, request: web.Request) -> web.StreamResponse:
    types_q = request.query.get("types")
    types = frozenset(t.strip() for t in types_q.split(",") if t.strip()) if types_q else None
    last_id = last_event_id(request.headers.get("Last-Event-ID"))
    hub = v.hub
    if hub.closed:
        raise ApiError(503, "shutting_down", "the node is stopping")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    sub, reset = hub.subscribe(types, last_id)
    try:
        if reset:
            await resp.write(b"event: reset\ndata: {}\n\n")
        hello = json.dumps(
            {
                "node": v.config().node.name,
                "role": v.cluster.role().name.lower(),
                "epoch": v.cluster.epoch(),
            }
        )
        await resp.write(f"event: hello\ndata: {hello}\n\n".encode())
        queue = sub.queue
        while True:
            if queue.empty():
                try:
                    first = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
            else:
                first = queue.get_nowait()
            chunk, end = _sse_chunk(first, queue)
            await resp.write(chunk)
            if end:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(sub)
    return resp


def _sse_chunk(
    first: tuple[int, str, bytes] | None, queue: asyncio.Queue[tuple[int, str, bytes] | None]
) -> tuple[bytes, bool]:
    """``first`` and what else is queued (up to SSE_CHUNK_EVENTS) as one write; True: the end.

    One write per burst rather than per event: at 10,000 record events a
    second a write each (a send(2) each) was most of a secondary's CPU.
    """
    parts: list[bytes] = []
    item = first
    while True:
        if item is None:
            parts.append(b"event: overflow\ndata: {}\n\n")
            return b"".join(parts), True
        seq, etype, data = item
        if etype == SHUTDOWN:
            parts.append(b"event: %s\ndata: %s\n\n" % (SHUTDOWN.encode(), data))
            return b"".join(parts), True
        parts.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, etype.encode(), data))
        if len(parts) >= SSE_CHUNK_EVENTS or queue.empty():
            return b"".join(parts), False
        item = queue.get_nowait()


@functools.cache
def openapi_json() -> bytes:
    """hasyncd/openapi.yaml (proto/openapi.yaml links to it) as JSON, read once."""
    text = resources.files("hasyncd").joinpath("openapi.yaml").read_text()
    return json.dumps(yaml.safe_load(text)).encode()
