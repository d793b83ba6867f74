"""Unit tests of the shell's parts that integration tests alone exercised: SyncWaiters,
EventHub, HookRunner, Metrics and the Dialer, each without a daemon."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd.config import HooksConfig
from hasyncd.core.events import RecordChanged, RoleChanged
from hasyncd.daemon.api_cluster import SSE_CHUNK_EVENTS, _sse_chunk
from hasyncd.daemon.dialer import Dialer, split_address
from hasyncd.daemon.eventhub import QUEUE, REPLAY, SHUTDOWN, EventHub
from hasyncd.daemon.hooks import HISTORY, HookRunner
from hasyncd.daemon.metrics import Metrics
from hasyncd.daemon.views import NodeGauges, PeerGauges, SessionGauges
from hasyncd.daemon.waiters import SyncWaiters
from hasyncd.wire.messages import Role

# -- SyncWaiters ---------------------------------------------------------------------------


def test_waiters_release_in_version_order_and_only_up_to_the_watermark() -> None:
    async def main() -> None:
        w = SyncWaiters()
        w.update(0)
        tasks = {v: asyncio.ensure_future(w.wait(v, 30)) for v in (3, 1, 2)}
        await asyncio.sleep(0.01)
        w.update(2)
        done, _ = await asyncio.wait([tasks[1], tasks[2]], timeout=10)
        assert {tasks[1], tasks[2]} == done
        assert tasks[1].result() is True and tasks[2].result() is True
        await asyncio.sleep(0.01)
        assert not tasks[3].done()  # version 3 is not acknowledged yet
        w.update(None)  # the last in-sync secondary left: the write cannot be replicated
        assert await tasks[3] is False

    asyncio.run(main())


def test_waiters_answer_at_once_when_nothing_can_or_must_be_waited_for() -> None:
    async def main() -> None:
        w = SyncWaiters()
        assert await w.wait(1, 30) is False  # no in-sync secondary at all
        w.update(5)
        assert await w.wait(5, 30) is True  # already acknowledged
        assert await w.wait(6, 0.01) is False  # times out
        assert w._heap == [] or all(f.done() for _, _, f in w._heap)

    asyncio.run(main())


# -- EventHub ------------------------------------------------------------------------------


def role_changed(epoch: int) -> RoleChanged:
    return RoleChanged("secondary", "primary", epoch, "fw-a", "test")


def test_hub_numbers_events_filters_and_replays_after_last_event_id() -> None:
    async def main() -> None:
        wanted: list[bool] = []
        hub = EventHub(on_subscribers=wanted.append)
        for e in range(1, 4):
            hub.publish(role_changed(e))
        sub, reset = hub.subscribe(frozenset({"role_changed"}), last_id=1)
        assert reset is False
        got = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert [(seq, etype) for seq, etype, _ in got] == [(2, "role_changed"), (3, "role_changed")]
        assert json.loads(got[0][2])["epoch"] == 2
        assert wanted[-1] is False  # nobody asked for record events: the core need not make them
        rec_sub, _ = hub.subscribe(None, None)
        assert wanted[-1] is True
        hub.unsubscribe(rec_sub)
        assert wanted[-1] is False

    asyncio.run(main())


def test_hub_resets_a_client_whose_events_left_the_replay_buffer() -> None:
    async def main() -> None:
        hub = EventHub(on_subscribers=lambda _: None)
        for e in range(REPLAY + 5):
            hub.publish(role_changed(e))
        _, reset = hub.subscribe(None, last_id=3)
        assert reset is True
        _, reset = hub.subscribe(None, last_id=10)  # event 11 is the oldest one kept: no gap
        assert reset is False

    asyncio.run(main())


def test_hub_drops_a_slow_subscriber_and_closes_every_stream_with_shutdown() -> None:
    async def main() -> None:
        hub = EventHub(on_subscribers=lambda _: None)
        slow, _ = hub.subscribe(frozenset({"record_changed"}), None)
        full, _ = hub.subscribe(frozenset({"role_changed"}), None)
        for i in range(QUEUE):
            hub.publish(role_changed(i))  # fills `full`'s queue exactly; `slow` filters them out
        for i in range(QUEUE + 1):
            hub.publish(RecordChanged("ipsec_sa", f"id{i}", "put", 1, i))
        assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is None  # overflow marker
        hub.close("bye")
        assert hub.closed
        while full.queue.qsize() > 1:
            full.queue.get_nowait()
        _seq, etype, data = full.queue.get_nowait()  # a full queue still gets its SHUTDOWN
        assert (etype, json.loads(data)) == (SHUTDOWN, {"reason": "bye"})

    asyncio.run(main())


def test_the_event_stream_writes_a_burst_in_chunks_in_order_and_ends_on_shutdown() -> None:
    async def main() -> None:
        hub = EventHub(on_subscribers=lambda _: None)
        sub, _ = hub.subscribe(frozenset({"record_changed"}), None)
        n = 2 * SSE_CHUNK_EVENTS + 5
        for i in range(n):
            hub.publish(RecordChanged("ipsec_sa", f"id{i}", "put", 1, i))
        hub.close("bye")
        chunks: list[bytes] = []
        end = False
        while not end:
            chunk, end = _sse_chunk(sub.queue.get_nowait(), sub.queue)
            chunks.append(chunk)
        assert len(chunks) == 3  # 1024, 1024, then 5 and the shutdown: one write each
        frames = b"".join(chunks).split(b"\n\n")[:-1]
        assert len(frames) == n + 1
        for i, frame in enumerate(frames[:-1]):
            seq, etype, data = frame.split(b"\n")
            assert (seq, etype) == (b"id: %d" % (i + 1), b"event: record_changed")
            assert json.loads(data.removeprefix(b"data: ")) == {
                "kind": "ipsec_sa",
                "id": f"id{i}",
                "op": "put",
                "epoch": 1,
                "seq": i,
            }
        assert frames[-1] == b'event: shutdown\ndata: {"reason":"bye"}'

    asyncio.run(main())


# -- HookRunner ----------------------------------------------------------------------------


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def doc(reason: str) -> dict[str, object]:
    return {"old_role": "secondary", "new_role": "primary", "epoch": 7, "reason": reason}


def test_hooks_run_in_order_one_at_a_time_and_record_their_outcome(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hook = script(
        tmp_path / "on_primary",
        f'read doc; echo "start $HASYNCD_REASON $HASYNCD_EPOCH" >> {log}; sleep 0.05; '
        f'echo "end $HASYNCD_REASON" >> {log}; echo oops >&2; exit 3\n',
    )
    results: list[tuple[str, str]] = []

    async def main() -> HookRunner:
        cfg = HooksConfig(on_primary=hook, on_secondary=None, on_fault=None, timeout_s=10)
        runner = HookRunner(cfg, "fw-a", lambda h, r, s: results.append((h, r)))
        runner.submit("on_secondary", doc("ignored"))  # not configured: not queued
        for reason in ("one", "two", "three"):
            runner.submit("on_primary", doc(reason))
        assert runner.queued == 3
        task = asyncio.ensure_future(runner.run())
        while len(runner.history) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        return runner

    runner = asyncio.run(main())
    assert log.read_text().split("\n")[:-1] == [
        "start one 7",
        "end one",
        "start two 7",
        "end two",
        "start three 7",
        "end three",
    ]
    assert results == [("on_primary", "failed")] * 3
    last = runner.recent()[-1]
    assert (last["result"], last["exit"], last["stderr"]) == ("failed", 3, "oops\n")


def test_a_hook_past_its_timeout_is_killed_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    hook = script(tmp_path / "slow", "exec sleep 30\n")

    async def main() -> list[dict[str, object]]:
        cfg = HooksConfig(
            on_primary=hook, on_secondary=tmp_path / "absent", on_fault=None, timeout_s=0.2
        )
        runner = HookRunner(cfg, "fw-a", lambda h, r, s: None)
        runner.submit("on_primary", doc("slow"))
        runner.submit("on_secondary", doc("absent"))
        task = asyncio.ensure_future(runner.run())
        while len(runner.history) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        return runner.recent()

    slow, absent = asyncio.run(main())
    assert slow["result"] == "timeout"
    assert slow["exit"] == -9
    assert absent["result"] == "error"
    assert HISTORY >= 2


# -- Metrics -------------------------------------------------------------------------------


def gauges(**kw: Any) -> NodeGauges:
    base: dict[str, Any] = {
        "stats": {"link_errors": {"decrypt_failed": 2}},
        "role": Role.SECONDARY,
        "epoch": 9,
        "in_sync": True,
        "fenced": False,
        "suspended": True,
        "records": {"ipsec_sa": 5},
        "freshness": {"age_p50_s": 1.5, "age_p99_s": None, "recovery_point_packets": 20},
        "rekey_pending": 3,
        "peers": (
            PeerGauges(
                "fw-b",
                up=True,
                link=True,
                silence=0.1,
                rtt=None,
                in_flight=7,
                session=None,
                key=("00112233aabbccdd", "next"),
            ),
            PeerGauges(
                "fw-c",
                up=False,
                link=False,
                silence=3.0,
                rtt=0.002,
                in_flight=0,
                session=SessionGauges(pending=4, in_sync=False, lag_seconds=1.5, lag_records=4),
            ),
        ),
    }
    base.update(kw)
    return NodeGauges(**base)


def samples_of(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_render_the_gauge_snapshot_taken_at_scrape_time() -> None:
    snap = [gauges()]
    m = Metrics(lambda: snap[0])
    got = samples_of(m.render())
    assert got["hasyncd_role", (("role", "secondary"),)] == 1.0
    assert got["hasyncd_role", (("role", "primary"),)] == 0.0
    assert got["hasyncd_epoch", ()] == 9
    assert got["hasyncd_promotion_suspended", ()] == 1.0
    assert got["hasyncd_link_errors_total", (("code", "decrypt_failed"),)] == 2
    assert got["hasyncd_records", (("kind", "ipsec_sa"),)] == 5
    assert got["hasyncd_peer_up", (("peer", "fw-b"),)] == 1.0
    assert got["hasyncd_replication_inflight_bytes", (("peer", "fw-b"),)] == 7
    assert ("hasyncd_replication_pending", (("peer", "fw-b"),)) not in got  # no session
    assert got["hasyncd_replication_lag_records", (("peer", "fw-c"),)] == 4
    assert got["hasyncd_peer_rtt_seconds", (("peer", "fw-c"),)] == 0.002
    key = (("key", "next"), ("key_id", "00112233aabbccdd"), ("peer", "fw-b"))
    assert got["hasyncd_peer_link_key", key] == 1.0
    assert not any(n == "hasyncd_peer_link_key" and ("peer", "fw-c") in ls for n, ls in got)
    assert got["hasyncd_counter_age_p50_seconds", ()] == 1.5
    assert math.isnan(got["hasyncd_counter_age_p99_seconds", ()])  # none yet
    assert got["hasyncd_counter_recovery_point_packets", ()] == 20
    assert got["hasyncd_rekey_pending", ()] == 3
    snap[0] = gauges(role=Role.PRIMARY, epoch=10)  # read again at the next scrape
    got = samples_of(m.render())
    assert got["hasyncd_role", (("role", "primary"),)] == 1.0
    assert got["hasyncd_epoch", ()] == 10


def test_api_counters_land_in_their_series() -> None:
    m = Metrics(gauges)
    m.count_api_error("not_primary")
    m.count_api_request("/v1/status", 200)
    m.count_not_replicated("pptp_session")
    m.count_sync_write(False)
    m.hook_run("on_primary", "ok", 0.25)
    got = samples_of(m.render())
    assert got["hasyncd_api_errors_total", (("error", "not_primary"),)] == 1
    assert got["hasyncd_api_requests_total", (("route", "/v1/status"), ("status", "200"))] == 1
    assert got["hasyncd_not_replicated_writes_total", (("kind", "pptp_session"),)] == 1
    assert got["hasyncd_sync_writes_total", (("replicated", "false"),)] == 1
    assert got["hasyncd_sync_writes_total", (("replicated", "true"),)] == 0  # exists at zero
    assert got["hasyncd_hook_runs_total", (("hook", "on_primary"), ("result", "ok"))] == 1


# -- Dialer --------------------------------------------------------------------------------


def test_split_address() -> None:
    assert split_address("127.0.0.1:7400") == ("127.0.0.1", 7400)
    assert split_address("[::1]:7400") == ("::1", 7400)


def test_dialer_connects_with_the_link_protocol_or_reports_why_not() -> None:
    made: list[str] = []
    failed: list[tuple[str, str]] = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.close()

    def protocol(address: str) -> asyncio.Protocol:
        made.append(address)
        return Proto()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dialer = Dialer(protocol, lambda: 5.0, lambda a, r: failed.append((a, r)))
        await dialer.dial(f"127.0.0.1:{port}")
        server.close()
        await server.wait_closed()
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        await dialer.dial(f"127.0.0.1:{closed}")

    asyncio.run(main())
    assert len(made) >= 1 and made[0].startswith("127.0.0.1:")
    assert len(failed) == 1
    address, reason = failed[0]
    assert address.startswith("127.0.0.1:")
    # The OS's reason, not asyncio's "Connect call failed (address)" wrapper.
    assert reason == os.strerror(errno.ECONNREFUSED)


@pytest.mark.parametrize("timeout", [0.0])
def test_dialer_reports_a_timeout_as_such(timeout: float) -> None:
    failed: list[tuple[str, str]] = []

    async def main() -> None:
        dialer = Dialer(
            lambda a: asyncio.Protocol(), lambda: timeout, lambda a, r: failed.append((a, r))
        )
        await dialer.dial("192.0.2.1:7400")  # TEST-NET-1: nothing answers

    asyncio.run(main())
    assert len(failed) == 1
    assert failed[0][1] in (
        "connect timed out",
        os.strerror(errno.ENETUNREACH),
        os.strerror(errno.EHOSTUNREACH),
    )
