"""Partitions with real processes in network namespaces this test creates (root only).

Each node runs in its own namespace, joined by a veth pair on 192.0.2.0/24;
``ip link set ... down`` cuts the HA link the way a pulled cable would: no
FIN, no RST, frames simply stop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode

pytestmark = [pytest.mark.integration, pytest.mark.netns]

HOOK = """#!/bin/sh
cat > "{dir}/hook-$HASYNCD_NODE-$HASYNCD_HOOK-$$.json"
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    name = f"hsd-probe-{os.getpid()}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create network namespaces: {exc}"
    return None


class Namespaces:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"hsd{tag}a", f"hsd{tag}b"
        self.link_a, self.link_b = "hlink", "hlink"

    def create(self) -> None:
        for ns in (self.a, self.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            "hlink",
            "netns",
            self.a,
            "type",
            "veth",
            "peer",
            "name",
            "hlink",
            "netns",
            self.b,
        )
        _ip("-n", self.a, "addr", "add", "192.0.2.1/24", "dev", "hlink")
        _ip("-n", self.b, "addr", "add", "192.0.2.2/24", "dev", "hlink")
        for ns in (self.a, self.b):
            _ip("-n", ns, "link", "set", "hlink", "up")
            # A monitored "data" interface per node: a veth pair inside the namespace.
            _ip("-n", ns, "link", "add", "mon0", "type", "veth", "peer", "name", "mon1")
            _ip("-n", ns, "link", "set", "mon0", "up")
            _ip("-n", ns, "link", "set", "mon1", "up")

    def destroy(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def cut(self) -> None:
        _ip("-n", self.a, "link", "set", "hlink", "down")

    def heal(self) -> None:
        _ip("-n", self.a, "link", "set", "hlink", "up")


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    why = _can_netns()
    if why is not None:
        pytest.skip(why)
    ns = Namespaces()
    ns.destroy()
    ns.create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def ns_cluster(netns: Namespaces, tmp_path: Path) -> Iterator[LabCluster]:
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK.format(dir=tmp_path))
    hook.chmod(0o755)
    nodes = [
        LabNode(
            "fw-a",
            tmp_path,
            "192.0.2.1:7411",
            200,
            prefix=("ip", "netns", "exec", netns.a),
            extra={"node": {"monitor": ["mon0"]}},
        ),
        LabNode(
            "fw-b",
            tmp_path,
            "192.0.2.2:7411",
            100,
            prefix=("ip", "netns", "exec", netns.b),
            extra={"node": {"monitor": ["mon0"]}},
        ),
    ]
    base: dict[str, dict[str, Any]] = {
        "link": {"hello_holddown_ms": 1000},
        "hooks": {"on_primary": str(hook), "on_fault": str(hook)},
    }
    cluster = LabCluster(tmp_path, nodes, base)
    cluster.start()
    try:
        yield cluster
    finally:
        for node in nodes:
            node.kill()


def _put(node: LabNode, kind: str, rid: str, rec: dict[str, Any]) -> int:
    code, _ = node.client.put(f"/v1/records/{kind}/{rid}", rec)
    return code


def test_link_cut_and_heal_merges_writes_from_both_sides(
    ns_cluster: LabCluster, netns: Namespaces, tmp_path: Path
) -> None:
    cluster = ns_cluster
    a, b = cluster["fw-a"], cluster["fw-b"]
    primary, _ = cluster.wait_pair()
    assert primary is a
    now = time.time()
    for i in range(50):
        assert _put(a, "sslvpn_web_session", *samples.web_session(i, now)) == 201
    sa_id, sa = samples.ipsec_sa(0, "out", now)
    assert _put(a, "ipsec_sa", sa_id, sa) == 201
    cluster.wait(lambda: (b.status() or {}).get("records", {}).get("sslvpn_web_session") == 50)

    netns.cut()
    cluster.wait(lambda: b.role() == "primary", 5, "fw-b to promote during the cut")
    assert a.role() == "primary"  # both primary: a split brain, in different epochs
    assert (a.status() or {})["epoch"] != (b.status() or {})["epoch"]
    only_a = [samples.web_session(100 + i, now) for i in range(10)]
    only_b = [samples.web_session(200 + i, now) for i in range(10)]
    for rid, rec in only_a:
        assert _put(a, "sslvpn_web_session", rid, rec) in (201, 202)
    for rid, rec in only_b:
        assert _put(b, "sslvpn_web_session", rid, rec) in (201, 202)
    # The same outbound SA used on both sides: a counted further than b.
    assert _put(a, "ipsec_sa", sa_id, {**sa, "seq": 9_000_000}) in (200, 202)
    assert _put(b, "ipsec_sa", sa_id, {**sa, "seq": 8_000_000}) in (200, 202)
    gone, _ = samples.web_session(7, now)
    assert b.client.delete(f"/v1/records/sslvpn_web_session/{gone}")[0] in (200, 202)

    netns.heal()

    def healed() -> bool:
        sa_, sb_ = a.status(), b.status()
        if not sa_ or not sb_:
            return False
        roles = sorted((sa_["role"], sb_["role"]))
        return roles == ["primary", "secondary"] and sa_["in_sync"] and sb_["in_sync"]

    cluster.wait(healed, 20, "one primary and an in-sync secondary after the heal")
    survivor, loser = (b, a) if b.role() == "primary" else (a, b)
    assert survivor is b  # the later promotion (higher epoch) survives
    for rid, _ in only_a + only_b:
        for node in (survivor, loser):
            assert node.client.get(f"/v1/records/sslvpn_web_session/{rid}")[0] == 200
    for node in (survivor, loser):
        assert node.client.get(f"/v1/records/sslvpn_web_session/{gone}")[0] == 404
        code, body = node.client.get(f"/v1/records/ipsec_sa/{sa_id}")
        assert code == 200
        assert body["record"]["seq"] >= 9_000_000  # counters never go backwards
    st_s, st_l = survivor.status(), loser.status()
    assert st_s is not None
    assert st_l is not None
    assert st_s["split_brain"]["survivor"] == survivor.name
    assert st_l["split_brain"]["survivor"] == survivor.name
    assert st_s["split_brain"]["merged"] >= len(only_a)
    assert st_s["split_brain"]["conflicts"] >= 1
    assert st_s["records"] == st_l["records"]
    # The survivor re-announced itself to the data plane after the dual-primary period.
    cluster.wait(
        lambda: any(
            "split brain" in json.loads(f.read_text())["reason"]
            for f in tmp_path.glob(f"hook-{survivor.name}-on_primary-*.json")
        ),
        5,
        "re-announce hook",
    )


def test_monitored_interface_down_hands_over(
    ns_cluster: LabCluster, netns: Namespaces, tmp_path: Path
) -> None:
    cluster = ns_cluster
    a, b = cluster["fw-a"], cluster["fw-b"]
    primary, _ = cluster.wait_pair()
    assert primary is a
    now = time.time()
    for i in range(20):
        assert _put(a, "sslvpn_web_session", *samples.web_session(i, now)) == 201
    _ip("-n", netns.a, "link", "set", "mon0", "down")
    cluster.wait(lambda: b.role() == "primary" and a.role() == "secondary", 5, "link failover")
    st = a.status()
    assert st is not None
    assert st["monitors"]["down"] == ["mon0"]
    assert (b.status() or {})["records"]["sslvpn_web_session"] == 20
    cluster.wait(lambda: any(tmp_path.glob("hook-fw-a-on_fault-*.json")), 5, "on_fault hook")
    # Back up: no preemption without override; the healthy primary keeps its role.
    _ip("-n", netns.a, "link", "set", "mon0", "up")
    time.sleep(1.5)
    assert b.role() == "primary"
    assert a.role() == "secondary"
