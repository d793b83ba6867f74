"""The API against its narrow views, through aiohttp's in-process test client (no daemon).

The views are small fakes that record what the API asked of them; the store
is the real one.  These tests pin the API's own rules: which error reaches
the client with which status and body, what is counted, how sync mode and
failover wait, and that the TCP API needs its token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hasyncd import config as config_mod
from hasyncd import samples
from hasyncd.config import Config
from hasyncd.core.counterpath import Outcome
from hasyncd.daemon.api import Api
from hasyncd.daemon.eventhub import EventHub
from hasyncd.daemon.views import ApiViews
from hasyncd.errors import WriteRefused
from hasyncd.lab import LabCluster
from hasyncd.records import Kind, Record
from hasyncd.store import Entry, Store, pack_value
from hasyncd.wire.messages import Role


@dataclasses.dataclass
class Written:
    version: int
    created: bool


class FakeWriter:
    """Stores writes in a real Store; ``refuse`` makes every write raise it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.version = 0
        self.refuse: Exception | None = None
        self.flushes = 0

    def _next(self) -> int:
        if self.refuse is not None:
            raise self.refuse
        self.version += 1
        return self.version

    def write(self, record: Record, now: float) -> Written:
        version = self._next()
        old = self.store.put_value(
            record.kind.code, record.id, pack_value(version, record.expires, record.blob)
        )
        return Written(version, old is None)

    def delete(self, kind: int, rid: str, now: float) -> Written | None:
        if self.store.get(kind, rid, time.time()) is None:
            self._next()  # a refusal still wins over "absent"
            return None
        version = self._next()
        self.store.put_value(kind, rid, pack_value(version, time.time() + 60, None))
        return Written(version, False)

    def write_batch(self, ops: list[tuple[int, str, Record | None]], now: float) -> list[Any]:
        if self.refuse is not None:
            raise self.refuse
        out: list[Any] = []
        for kind, rid, rec in ops:
            out.append(self.write(rec, now) if rec is not None else self.delete(kind, rid, now))
        return out

    def flush(self) -> None:
        self.flushes += 1


class PlainReader:
    """The store, records shown as stored (no promotion history in these tests)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, kind: int, rid: str, wall: float) -> Entry | None:
        return self.store.get(kind, rid, wall)

    def page(
        self, kind: int, after: str | None, limit: int, wall: float
    ) -> list[tuple[str, Entry]]:
        return self.store.page(kind, after, limit, wall)

    def shown(self, kind: Kind, rid: str, entry: Entry) -> dict[str, Any]:
        assert entry.blob is not None
        return kind.to_json(kind.decode(entry.blob))


class NoDataPlane:
    """The data-plane routes are tested against real daemons (test_integration_counters)."""

    def update_counters(self, items: list[Any], now: float) -> Outcome:
        raise AssertionError("not used here")

    write_leases = update_counters

    def has_in_sync_secondary(self) -> bool:
        return False

    def count(self, counter: str, label: str, n: int) -> None:
        pass

    def rekey(self) -> dict[str, Any]:
        return {"rate": 200.0, "pending": 0, "released": 0, "recent": []}


class FakeCluster:
    def __init__(self) -> None:
        self.failovers = 0
        self.handed_over = True
        self.waited: list[float] = []

    def status(self, now: float) -> dict[str, object]:
        return {"node": "fw-a", "role": "primary"}

    def history(self) -> list[dict[str, object]]:
        return [{"role": "primary", "epoch": 3}]

    def role(self) -> Role:
        return Role.PRIMARY

    def epoch(self) -> int:
        return 3 + self.failovers

    def request_failover(self, now: float) -> str:
        self.failovers += 1
        return "fw-b"

    async def wait_not_primary(self, timeout: float) -> bool:
        self.waited.append(timeout)
        return self.handed_over


class FakeHooks:
    queued = 2
    running = "on_primary"

    def recent(self) -> list[dict[str, object]]:
        return [{"hook": "on_primary", "result": "ok"}]


class Counts:
    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.not_replicated_kinds: Counter[str] = Counter()
        self.sync: Counter[bool] = Counter()

    def count_api_error(self, code: str) -> None:
        self.errors[code] += 1

    def count_api_request(self, route: str, status: int) -> None:
        self.requests[route, status] += 1

    def count_not_replicated(self, kind: str) -> None:
        self.not_replicated_kinds[kind] += 1

    def count_sync_write(self, replicated: bool) -> None:
        self.sync[replicated] += 1


class FakeWaiters:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[tuple[int, float]] = []

    async def wait(self, version: int, timeout: float) -> bool:
        self.asked.append((version, timeout))
        return self.answer


@dataclasses.dataclass
class Harness:
    views: ApiViews
    writer: FakeWriter
    cluster: FakeCluster
    counts: Counts
    waiters: FakeWaiters
    token: str


def lab_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    cluster = LabCluster.loopback(tmp_path)
    cluster["fw-a"].extra = {"api": {"listen": "127.0.0.1:1"}, **sections}
    cluster.write()
    return config_mod.load(cluster["fw-a"].config)


def run_api(
    cfg: Config, scenario: Callable[[TestClient[Any, Any], Harness], Awaitable[None]]
) -> None:
    async def main() -> None:
        store = Store()
        h = Harness(
            views=None,  # type: ignore[arg-type]
            writer=FakeWriter(store),
            cluster=FakeCluster(),
            counts=Counts(),
            waiters=FakeWaiters(answer=False),
            token=cfg.api_token.reveal().hex() if cfg.api_token else "",
        )
        h.views = ApiViews(
            config=lambda: cfg,
            clock=time.monotonic,
            writer=h.writer,
            reader=PlainReader(store),
            cluster=h.cluster,
            hooks=FakeHooks(),
            counters=h.counts,
            waiters=h.waiters,
            hub=EventHub(on_subscribers=lambda wanted: None),
            metrics=lambda: b"hasyncd_up 1\n",
            dataplane=NoDataPlane(),
        )
        api = Api(h.views)
        async with TestClient(
            TestServer(api.app), headers={"Authorization": f"Bearer {h.token}"}
        ) as client:
            await scenario(client, h)

    asyncio.run(main())


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return lab_config(tmp_path)


def test_a_write_refusal_keeps_its_status_and_body_and_is_counted(cfg: Config) -> None:
    rid, rec = samples.ipsec_sa(1, "out", time.time())

    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        cases = [
            (WriteRefused("not_primary", "this node is secondary", primary="fw-b"), 409),
            (WriteRefused("no_in_sync_secondary", "no secondary is in sync"), 409),
            (WriteRefused("fenced", "re-verifying primacy"), 503),
            (WriteRefused("handover_in_progress", "handing over"), 503),
            (WriteRefused("something_new", "an unplaced refusal"), 503),
        ]
        for exc, status in cases:
            h.writer.refuse = exc
            resp = await client.put(f"/v1/records/ipsec_sa/{rid}", json=rec)
            body = await resp.json()
            assert resp.status == status, body
            # "primary" is in the body even when no primary is known (clients test for it).
            assert body == {"error": exc.code, "message": exc.message, "primary": exc.primary}
            assert h.counts.errors[exc.code] == 1
        assert h.counts.requests["/v1/records/{kind}/{id}", 409] == 2
        # The batch form of the same refusal: the status in front, the op's id, no null field.
        h.writer.refuse = WriteRefused("fenced", "re-verifying primacy")
        line = b'{"op": "delete", "kind": "ipsec_sa", "id": "%s"}' % rid.encode()
        resp = await client.post(
            "/v1/records:batch", data=line, headers={"Content-Type": "application/x-ndjson"}
        )
        body = await resp.json()
        assert resp.status == 200
        assert body["results"] == [
            {"status": 503, "error": "fenced", "message": "re-verifying primacy", "id": rid}
        ]

    run_api(cfg, scenario)


def test_kind_errors_name_the_kind_and_count_refused_writes(cfg: Config) -> None:
    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        resp = await client.put("/v1/records/pptp_session/x", json={})
        body = await resp.json()
        assert resp.status == 422
        assert body["error"] == "not_replicated"
        assert body["kind"] == "pptp_session"
        assert body["reason"]
        assert h.counts.not_replicated_kinds == {"pptp_session": 1}
        resp = await client.get("/v1/records/pptp_session/x")  # a read is not a refused write
        assert resp.status == 422
        assert h.counts.not_replicated_kinds == {"pptp_session": 1}
        resp = await client.get("/v1/records/nosuch/x")
        assert (resp.status, await resp.json()) == (
            404,
            {"error": "unknown_kind", "message": "unknown record kind 'nosuch'", "kind": "nosuch"},
        )
        resp = await client.put("/v1/records/ipsec_sa/x", json={"spi": 1})
        body = await resp.json()
        assert resp.status == 400
        assert body["field"]  # a record error names the offending field
        assert h.writer.version == 0  # nothing invalid reached the writer

    run_api(cfg, scenario)


def test_a_bug_is_a_logged_500_that_does_not_leak_its_message(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    rid, rec = samples.ipsec_sa(2, "out", time.time())

    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        h.writer.refuse = RuntimeError("secret-ish detail")
        resp = await client.put(f"/v1/records/ipsec_sa/{rid}", json=rec)
        assert resp.status == 500
        assert await resp.json() == {
            "error": "internal_error",
            "message": "internal error (logged)",
        }
        assert h.counts.errors["internal_error"] == 1
        resp = await client.get("/v1/nothing/here")  # aiohttp's own 404, in the API's JSON
        assert (resp.status, await resp.json()) == (
            404,
            {"error": "http_404", "message": "Not Found"},
        )
        assert h.counts.requests["unmatched", 404] == 1

    run_api(cfg, scenario)
    assert "secret-ish detail" in caplog.text  # logged for the operator, with its traceback
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)


def test_tcp_api_needs_the_token(cfg: Config) -> None:
    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        for auth in ("", "Bearer ", "Bearer " + "0" * 64, "Basic x"):
            resp = await client.get("/v1/status", headers={"Authorization": auth})
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["error"] == "unauthorized"
        resp = await client.get("/v1/status")
        assert resp.status == 200

    run_api(cfg, scenario)


def test_status_adds_the_hooks_and_the_sync_mode(cfg: Config) -> None:
    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        resp = await client.get("/v1/status")
        body = await resp.json()
        assert body["role"] == "primary"
        assert body["hooks"] == {
            "queued": 2,
            "running": "on_primary",
            "recent": [{"hook": "on_primary", "result": "ok"}],
        }
        assert body["sync_mode"] == cfg.sync.mode
        resp = await client.get("/v1/history")
        assert await resp.json() == {"node": "fw-a", "history": [{"role": "primary", "epoch": 3}]}

    run_api(cfg, scenario)


def test_sync_mode_waits_for_the_watermark_and_answers_202_when_not_replicated(
    tmp_path: Path,
) -> None:
    cfg = lab_config(tmp_path, sync={"mode": "sync", "sync_timeout_ms": 250})
    rid, rec = samples.ipsec_sa(3, "out", time.time())

    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        resp = await client.put(f"/v1/records/ipsec_sa/{rid}", json=rec)
        body = await resp.json()
        assert resp.status == 202
        assert body["replicated"] is False
        assert h.waiters.asked == [(1, 0.25)]  # the write's version, sync_timeout_ms
        assert h.writer.flushes >= 1  # sent before waiting, or the wait could never end
        h.waiters.answer = True
        resp = await client.put(f"/v1/records/ipsec_sa/{rid}", json=rec)
        assert resp.status == 200  # an update, replicated
        assert (await resp.json())["replicated"] is True
        assert h.counts.sync == {False: 1, True: 1}

    run_api(cfg, scenario)


def test_async_mode_does_not_wait(cfg: Config) -> None:
    rid, rec = samples.ipsec_sa(4, "out", time.time())

    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        resp = await client.put(f"/v1/records/ipsec_sa/{rid}", json=rec)
        assert resp.status == 201
        assert "replicated" not in await resp.json()
        assert h.waiters.asked == []
        resp = await client.get(f"/v1/records/ipsec_sa/{rid}")
        assert (await resp.json())["record"]["spi"] == rec["spi"]
        resp = await client.delete(f"/v1/records/ipsec_sa/{rid}")
        assert resp.status == 200
        resp = await client.get(f"/v1/records/ipsec_sa/{rid}")
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"

    run_api(cfg, scenario)


def test_failover_waits_for_the_handover_and_times_out_with_504(cfg: Config) -> None:
    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        resp = await client.post("/v1/failover")
        assert (resp.status, await resp.json()) == (200, {"new_primary": "fw-b", "epoch": 4})
        h.cluster.handed_over = False
        resp = await client.post("/v1/failover")
        body = await resp.json()
        assert resp.status == 504
        assert body["error"] == "handover_timeout"
        assert body["target"] == "fw-b"
        timeout = cfg.promotion.handover_timeout_ms / 1000.0
        assert all(w > timeout for w in h.cluster.waited)  # the handover's own bound, and more

    run_api(cfg, scenario)


def test_events_refused_once_the_hub_is_closed(cfg: Config) -> None:
    async def scenario(client: TestClient[Any, Any], h: Harness) -> None:
        h.views.hub.close("stopping")
        resp = await client.get("/v1/events")
        assert (resp.status, (await resp.json())["error"]) == (503, "shutting_down")

    run_api(cfg, scenario)
