"""Operating the daemon as systemd does: stop with clients attached, reload, planned stops.

Real ``hasyncd run`` processes on loopback, driven only through signals, the
API socket and their logs.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode

from .test_integration_failover import SSE

pytestmark = pytest.mark.integration

# systemd/hasyncd.service: TimeoutStopSec=15.  A stop must end before systemd
# would SIGKILL the node, whatever its API clients do.
SYSTEMD_STOP_TIMEOUT = 15.0


def log_of(node: LabNode) -> str:
    return node.log.read_text() if node.log.exists() else ""


def wait_exit(node: LabNode, timeout: float) -> int:
    assert node.proc is not None
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{node.name} still running {timeout} s after SIGTERM:\n{log_of(node)[-3000:]}"
        ) from None


def raw_unix(path: Path, data: bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(data)
    return s


def test_stop_ends_event_streams_and_slow_clients_in_bounded_time(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    streams = [SSE(n.socket) for n in (primary, secondary) for _ in range(2)]
    # A subscriber that never reads, and a client stuck in the middle of its request.
    mute = raw_unix(primary.socket, b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    partial = raw_unix(primary.socket, b"PUT /v1/records/ike_sa/x HTTP/1.1\r\nHost: x\r\n")
    try:
        cluster.wait(lambda: all(s.of("hello") for s in streams), 5, "hello events")
        t0 = time.monotonic()
        primary.signal(signal.SIGTERM)
        assert wait_exit(primary, SYSTEMD_STOP_TIMEOUT) == 0
        took = time.monotonic() - t0
        # The primary handed over first, and told its subscribers it was going.
        assert secondary.role() == "primary"
        for s in streams[:2]:
            cluster.wait(lambda s=s: bool(s.of("shutdown")), 2, "shutdown event")
        secondary.signal(signal.SIGTERM)
        assert wait_exit(secondary, SYSTEMD_STOP_TIMEOUT) == 0
        for s in streams[2:]:
            cluster.wait(lambda s=s: bool(s.of("shutdown")), 2, "shutdown event")
        assert "stopped" in log_of(primary)
        assert not primary.socket.exists()
        print(f"stop of a primary with 4 clients attached: exited {took:.2f} s after SIGTERM")
    finally:
        for s in streams:
            s.close()
        mute.close()
        partial.close()


def test_a_second_sigterm_forces_the_exit(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    secondary.signal(signal.SIGSTOP)  # the handover target stops answering
    try:
        primary.signal(signal.SIGTERM)
        cluster.wait(lambda: "handing the primary role" in log_of(primary), 5, "handover start")
        primary.signal(signal.SIGTERM)
        assert wait_exit(primary, 5) == 0
        assert "second stop signal" in log_of(primary)
    finally:
        secondary.signal(signal.SIGCONT)


def rewrite_config(cluster: LabCluster, who: LabNode, sections: dict[str, dict[str, Any]]) -> None:
    extra = {k: dict(v) for k, v in who.extra.items()}
    for section, values in sections.items():
        extra.setdefault(section, {}).update(values)
    who.extra = extra
    cluster.write()


def test_sighup_reloads_live_settings_and_keeps_the_link(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    before = secondary.status()
    assert before is not None
    assert before.get("priority", 100) == 100  # (the field is new; the reload must not kill)
    rewrite_config(
        cluster,
        secondary,
        {"node": {"priority": 150}, "log": {"level": "debug"}, "api": {"max_body_mib": 8}},
    )
    for node in (secondary, primary):  # a reload of the primary must not fail it over either
        node.signal(signal.SIGHUP)
    cluster.wait(lambda: "reload: [node].priority: 100 -> 150" in log_of(secondary), 5, "reload")
    cluster.wait(lambda: "reload: configuration unchanged" in log_of(primary), 5, "reload")
    text = log_of(secondary)
    assert "reload: [log].level: info -> debug" in text
    assert "[api].max_body_mib changed: takes effect only after a restart" in text
    after = secondary.status()
    assert after is not None
    assert after["priority"] == 150
    # The link stayed up: no new link, no loss, no role change, still in sync.
    for node in (primary, secondary):
        st = node.status()
        assert st is not None
        assert all(p["link"] == "up" for p in st["peers"]), st["peers"]
        assert "peer fw-" not in log_of(node).split("reload:")[-1]
    assert primary.role() == "primary"
    assert after["in_sync"] is True
    assert log_of(secondary).count("link up:") == 1
    # A reload with an invalid file is refused and changes nothing.
    secondary.config.write_text(secondary.config.read_text() + "\n[bogus]\n")
    secondary.signal(signal.SIGHUP)
    cluster.wait(lambda: "reload refused" in log_of(secondary), 5, "refused reload")
    assert "unknown section [bogus]" in log_of(secondary)
    assert secondary.running
    assert (secondary.status() or {}).get("priority") == 150


def handles_sighup(pid: int) -> bool:
    """Whether the process catches or ignores SIGHUP (its default action is to die)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    bit = 1 << (signal.SIGHUP - 1)
    return bool((int(masks["SigCgt"], 16) | int(masks["SigIgn"], 16)) & bit)


def test_sighup_during_start_up_does_not_kill_the_node(tmp_path: Path) -> None:
    cluster = LabCluster.loopback(tmp_path)  # fw-b is configured but never started
    cluster.write()
    node = cluster["fw-a"]
    node.start()
    assert node.proc is not None
    try:
        # As soon as hasyncd's own code runs (before the daemon is up), SIGHUP is safe.
        cluster.wait(lambda: handles_sighup(node.proc.pid), 10, "a SIGHUP disposition")  # type: ignore[union-attr]
        node.signal(signal.SIGHUP)
        cluster.wait(lambda: node.role() == "primary", 10, "lone primary")
        assert node.running
    finally:
        assert node.stop() == 0


def batch_of_web_sessions(node: LabNode, start: int, n: int, now: float) -> None:
    lines = []
    for i in range(start, start + n):
        rid, rec = samples.web_session(i, now)
        op = {"op": "put", "kind": "sslvpn_web_session", "id": rid, "record": rec}
        lines.append(json.dumps(op).encode())
    code, body = node.client.request(
        "POST", "/v1/records:batch", raw=b"\n".join(lines), content_type="application/x-ndjson"
    )
    assert code == 200, body
    assert all(r["status"] == 201 for r in body["results"])


def test_sigterm_while_the_secondary_loads_its_snapshot_loses_nothing(tmp_path: Path) -> None:
    total = 60_000
    # A smaller receive window on the joining node makes its snapshot take long
    # enough (about a second) to be caught in the middle.
    cluster = LabCluster.loopback(tmp_path)
    cluster["fw-b"].extra = {"link": {"window_kib": 128}}
    cluster.write()
    a, b = cluster["fw-a"], cluster["fw-b"]
    try:
        a.start()
        cluster.wait(lambda: a.role() == "primary", 15, "lone primary")
        now = time.time()
        for start in range(0, total, 20_000):
            batch_of_web_sessions(a, start, 20_000, now)
        b.start()

        def loading() -> bool:
            st = b.status()
            sync = None if st is None else st.get("sync")
            return sync is not None and 0 < sync["snapshot_records"] < total // 2

        cluster.wait(loading, 30, "the secondary in the middle of its snapshot")
        a.signal(signal.SIGTERM)
        assert wait_exit(a, SYSTEMD_STOP_TIMEOUT) == 0
        st = b.status()
        assert st is not None
        assert st["role"] == "primary", st["role_reason"]
        assert "handover" in st["role_reason"]
        assert st["records"]["sslvpn_web_session"] == total
        assert "promoting although this node was not in sync" not in log_of(b)
        assert "waiting for fw-b to finish loading its snapshot" in log_of(a) or (
            "handing the primary role to fw-b" in log_of(a)
        )
    finally:
        for node in (a, b):
            node.kill()


def test_maintenance_does_not_suspend_automatic_failover(make_cluster: Any) -> None:
    cluster = make_cluster(base={"node": {"max_flaps": 1}})
    a, b = cluster.wait_pair()
    for target in (b, a):  # two manual failovers
        code, body = (a if target is b else b).client.post("/v1/failover")
        assert code == 200, body
        cluster.wait_pair()
    a.signal(signal.SIGTERM)  # a planned stop hands over to b
    assert wait_exit(a, SYSTEMD_STOP_TIMEOUT) == 0
    a.start()
    cluster.wait_pair()
    for node in (a, b):
        st = node.status()
        assert st is not None
        assert st["suspended"] is None, st
        assert "SUSPENDED" not in log_of(node)
    assert b.role() == "primary"
    b.kill()  # an unplanned failure still fails over
    cluster.wait(lambda: a.role() == "primary", 5, "automatic failover")
