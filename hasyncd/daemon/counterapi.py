"""The data plane's API: counter updates, sequence-number leases, the rekey queue.

* ``POST /v1/counters``: ``{"updates": [{"id", "seq", "bytes", "packets",
  "replay_bitmap"?}, ...]}``, at most ``MAX_COUNTER_UPDATES``; each update
  stands alone (a bad one is reported in ``errors``, the others apply).
* ``POST /v1/leases``: ``{"leases": [{"id", "seq_limit"}, ...]}``; granted
  only once every in-sync secondary acknowledged them (503 ``not_replicated``
  otherwise, nothing granted).  With no in-sync secondary, 503
  ``no_in_sync_secondary``: an isolated primary cannot tell a dead peer from
  a partition, and a lease the other side cannot know would be used twice.
* ``GET /v1/rekey``: what the rekey governor released recently and what is
  pending.

The core work is in ``hasyncd.core.counterpath``; records are read through
the read-time view (``hasyncd.core.seqview``) by the API's record reader
(``hasyncd.daemon.coreviews.CoreReader.shown``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from hasyncd.core.counterpath import (
    MAX_COUNTER_UPDATES,
    MAX_LEASES,
    CounterUpdate,
    LeaseRequest,
    Outcome,
)
from hasyncd.daemon.bodies import read_body
from hasyncd.daemon.views import ApiViews
from hasyncd.errors import ApiError

# A request body: MAX_COUNTER_UPDATES updates of ~150 bytes (an inbound SA
# with a 1024-packet bitmap is ~400) fit well inside 8 MiB.
MAX_COUNTERS_BODY = 8 * 1024 * 1024
MAX_RECENT_SHOWN = 1000  # releases returned by GET /v1/rekey
# Updates handed to the core at once: ~5 ms of work at ~5-10 µs each.  The
# handler yields to the event loop between chunks, so a request of 10,000
# never delays heartbeats (a 100 ms stall on a loaded machine fences a primary).
CHUNK = 512


class _CountersBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    updates: list[msgspec.Raw]


class _LeasesBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    leases: list[msgspec.Raw]


def _decode_list(raw: bytes, body_type: Any, field: str, limit: int) -> list[msgspec.Raw]:
    try:
        body = msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise ApiError(
            400, "invalid_body", f'the body must be {{"{field}": [...]}}: {exc}'
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    items: list[msgspec.Raw] = getattr(body, field)
    if len(items) > limit:
        raise ApiError(
            413, "too_many_items", f"at most {limit} {field} per request, got {len(items)}"
        )
    return items


def _items(raws: list[msgspec.Raw], item_type: Any, out: Outcome) -> list[Any]:
    """Decode each item on its own: a malformed one is an error of that item only."""
    decoder = msgspec.json.Decoder(item_type)
    good = []
    for raw in raws:
        try:
            good.append(decoder.decode(raw))
        except msgspec.ValidationError as exc:
            rid = _id_of(raw)
            out.error(rid, "invalid_item", str(exc))
    return good


def _id_of(raw: msgspec.Raw) -> str:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:  # pragma: no cover - the body decoded as a whole
        return ""
    rid = value.get("id") if isinstance(value, dict) else None
    return rid[:96] if isinstance(rid, str) else ""


def _count_errors(v: ApiViews, out: Outcome) -> None:
    for err in out.errors:
        v.counters.count_api_error(err["error"])


async def _chunked(
    v: ApiViews, apply: Callable[[list[Any], float], Outcome], items: list[Any]
) -> Outcome:
    """Apply in chunks, yielding between them.

    A role change between two chunks ends the request with its error (409
    ``not_primary``, 503 ``fenced``...): the updates before it stay applied,
    and sending them again to the new primary is harmless (older ones are
    ignored).
    """
    out = Outcome()
    for i in range(0, max(1, len(items)), CHUNK):
        if i:
            await asyncio.sleep(0)
        part = apply(items[i : i + CHUNK], v.clock())
        v.writer.flush()
        out.applied += part.applied
        out.ignored += part.ignored
        out.unknown += part.unknown
        out.errors += part.errors
        out.granted += part.granted
        out.version = max(out.version, part.version)
    return out


async def counters(v: ApiViews, request: web.Request) -> web.Response:
    raws = _decode_list(
        await read_body(request, MAX_COUNTERS_BODY), _CountersBody, "updates", MAX_COUNTER_UPDATES
    )
    bad = Outcome()
    updates = _items(raws, CounterUpdate, bad)
    out = await _chunked(v, v.dataplane.update_counters, updates)
    out.errors = bad.errors + out.errors
    if bad.errors:
        v.dataplane.count("counter_updates", "error", len(bad.errors))
    _count_errors(v, out)
    return web.json_response(
        {
            "applied": out.applied,
            "ignored": out.ignored,
            "unknown": out.unknown,
            "errors": out.errors,
        }
    )


async def leases(v: ApiViews, request: web.Request) -> web.Response:
    raws = _decode_list(
        await read_body(request, MAX_COUNTERS_BODY), _LeasesBody, "leases", MAX_LEASES
    )
    bad = Outcome()
    reqs = _items(raws, LeaseRequest, bad)
    out = await _chunked(v, v.dataplane.write_leases, reqs)
    errors = bad.errors + out.errors
    errors += [
        {"id": rid, "error": "not_found", "message": "no such ipsec_sa"} for rid in out.unknown
    ]
    if bad.errors:
        v.dataplane.count("leases", "error", len(bad.errors))
    out.errors = errors
    _count_errors(v, out)
    if out.granted:
        if not v.dataplane.has_in_sync_secondary():
            raise ApiError(
                503,
                "no_in_sync_secondary",
                "no secondary is in sync: a lease cannot be made durable, none granted "
                "(a data plane that keeps sending must report counters: the rate bound covers it)",
            )
        sync_ms = v.config().sync.sync_timeout_ms
        if not await v.waiters.wait(out.version, sync_ms / 1000.0):
            raise ApiError(
                503,
                "not_replicated",
                "the in-sync secondaries did not acknowledge the leases within "
                f"sync.sync_timeout_ms ({sync_ms} ms): none granted; "
                "retry",
            )
    return web.json_response({"granted": out.granted, "errors": errors, "replicated": True})


async def rekey(v: ApiViews, request: web.Request) -> web.Response:
    state = v.dataplane.rekey()
    recent = state.pop("recent")[-MAX_RECENT_SHOWN:]
    return web.json_response(
        {**state, "recent": [{"kind": k, "id": i, "at": at} for k, i, at in recent]}
    )
