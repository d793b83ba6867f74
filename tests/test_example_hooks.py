"""The example hooks (examples/hooks/) on real nodes in network namespaces the test creates.

Three namespaces: the two gateways, linked by their HA link, and a client
on a service LAN (a bridge) that reaches both gateways' service interface.
The ``vip`` hook must put the virtual IP on the primary's service interface,
announce it (the client's neighbour entry moves to the new owner's MAC),
and take it off a node that becomes secondary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasyncd.lab import LabCluster, LabNode

from .test_integration_netns import _can_netns, _ip

pytestmark = [pytest.mark.integration, pytest.mark.netns]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hooks"
VIP = "198.51.100.10"
CLIENT = "198.51.100.100"


def hook_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HASYNCD_NODE": "fw-a", "HASYNCD_EPOCH": "7", **extra}


def test_record_hook_keeps_each_document_whole(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    shutil.copytree(EXAMPLES, hooks)
    out = tmp_path / "events"
    (hooks / "record.conf").write_text(f"{out}\n")
    doc = {"node": "fw-a", "new_role": "primary", "epoch": 7}
    for hook in ("on_primary", "on_fault"):
        proc = subprocess.run(
            [str(hooks / "record")],
            input=json.dumps(doc).encode(),
            env=hook_env(HASYNCD_HOOK=hook),
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert [f.name.split("-", 1)[1] for f in files] == [
        "fw-a-on_primary-7.json",
        "fw-a-on_fault-7.json",
    ]
    assert all(json.loads(f.read_text()) == doc for f in files)


def test_vip_hook_refuses_to_run_without_its_config(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "vip", tmp_path / "vip")
    proc = subprocess.run(
        [str(tmp_path / "vip")],
        env=hook_env(HASYNCD_NEW_ROLE="primary"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 2
    assert "vip.conf is missing" in proc.stderr


class ServiceLan:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b, self.c = f"hsv{tag}a", f"hsv{tag}b", f"hsv{tag}c"

    def create(self) -> None:
        for ns in (self.a, self.b, self.c):
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
        _ip("-n", self.c, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.c, "addr", "add", f"{CLIENT}/24", "dev", "br0")
        _ip("-n", self.c, "link", "set", "br0", "up")
        for ns, port in ((self.a, "pa"), (self.b, "pb")):
            _ip(
                "link",
                "add",
                "svc0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.c,
            )
            _ip("-n", self.c, "link", "set", port, "master", "br0")
            _ip("-n", self.c, "link", "set", port, "up")
            _ip("-n", ns, "link", "set", "svc0", "up")
            _ip("-n", ns, "link", "set", "hlink", "up")

    def destroy(self) -> None:
        for ns in (self.a, self.b, self.c):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def mac(self, ns: str) -> str:
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "link", "show", "svc0"], capture_output=True, check=True
        )
        return str(json.loads(out.stdout)[0]["address"])

    def has_vip(self, ns: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "addr", "show", "svc0"], capture_output=True, check=True
        )
        return any(a["local"] == VIP for a in json.loads(out.stdout)[0]["addr_info"])

    def client_neighbour(self) -> str | None:
        """The MAC the client has for the VIP (after touching it, so it resolves)."""
        out = subprocess.run(
            ["ip", "-n", self.c, "-j", "neigh", "show", VIP], capture_output=True, check=True
        )
        entries = json.loads(out.stdout)
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None

    def touch_vip(self) -> None:
        # Any TCP connect makes the client resolve the VIP (the RST is fine).
        code = (
            "import socket; s = socket.socket(); s.settimeout(0.5)\n"
            f"try: s.connect(('{VIP}', 9))\nexcept OSError: pass"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.c, "python3", "-c", code],
            check=False,
            capture_output=True,
            timeout=10,
        )


@pytest.fixture
def lan() -> Iterator[ServiceLan]:
    why = _can_netns()
    if why is not None:
        pytest.skip(why)
    lan = ServiceLan()
    lan.destroy()
    lan.create()
    try:
        yield lan
    finally:
        lan.destroy()


def test_vip_follows_the_primary_and_is_announced(lan: ServiceLan, tmp_path: Path) -> None:
    nodes = []
    for name, ns, link, prio in (
        ("fw-a", lan.a, "192.0.2.1:7411", 200),
        ("fw-b", lan.b, "192.0.2.2:7411", 100),
    ):
        hooks = tmp_path / f"hooks-{name}"
        shutil.copytree(EXAMPLES, hooks)
        (hooks / "vip.conf").write_text(f"VIP={VIP}/24\nVIP_DEV=svc0\n")
        vip = str(hooks / "vip")
        nodes.append(
            LabNode(
                name,
                tmp_path,
                link,
                prio,
                prefix=("ip", "netns", "exec", ns),
                extra={"hooks": {"on_primary": vip, "on_secondary": vip}},
            )
        )
    cluster = LabCluster(tmp_path, nodes, {"link": {"hello_holddown_ms": 1000}})
    cluster.start()
    a, b = nodes
    try:
        cluster.wait_pair()
        cluster.wait(lambda: lan.has_vip(lan.a), 10, "VIP on fw-a")
        assert not lan.has_vip(lan.b)
        lan.touch_vip()
        cluster.wait(lambda: lan.client_neighbour() == lan.mac(lan.a), 5, "client resolves the VIP")
        a.kill()  # the gateway dies; its address stays configured in its namespace
        cluster.wait(lambda: b.role() == "primary", 5, "failover")
        cluster.wait(lambda: lan.has_vip(lan.b), 10, "VIP on fw-b")
        if shutil.which("arping"):
            # The gratuitous ARP moved the client's entry without any new resolution.
            cluster.wait(lambda: lan.client_neighbour() == lan.mac(lan.b), 5, "announcement")
        a.start()  # it rejoins as secondary: on_secondary takes the VIP off it
        cluster.wait(lambda: a.role() == "secondary", 15, "rejoin")
        cluster.wait(lambda: not lan.has_vip(lan.a), 10, "VIP removed from fw-a")
        assert lan.has_vip(lan.b)

        def primary_hook_runs() -> list[dict[str, object]]:
            recent = (b.status() or {}).get("hooks", {}).get("recent", [])
            return [h for h in recent if h["hook"] == "on_primary"]

        cluster.wait(lambda: bool(primary_hook_runs()), 10, "on_primary to finish")
        assert primary_hook_runs()[-1]["result"] == "ok", primary_hook_runs()
    finally:
        for node in nodes:
            node.kill()
