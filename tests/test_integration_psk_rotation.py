"""Rotating the link key on two real daemons, step by step as README documents it.

A writer keeps writing to the primary and a poller watches both nodes'
status throughout; the link must never drop (no "link up" after the first,
no role change, the peer's link up at every poll), every write must reach
the secondary at the primary's version, both ends must end under the new
key id, and the old key must be refused.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.config import load_psk
from hasyncd.lab import LabCluster, LabNode
from hasyncd.wire import handshake as hs
from hasyncd.wire.channel import Channel
from hasyncd.wire.messages import Hello

from .test_integration_lifecycle import log_of, rewrite_config
from .test_integration_spine import status

pytestmark = pytest.mark.integration


class Writer(threading.Thread):
    """Puts child SAs to the primary until stopped; keeps every id and answer."""

    def __init__(self, node: LabNode) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.written: list[str] = []
        self.failures: list[tuple[int, Any]] = []

    def run(self) -> None:
        client = self.node.client
        i = 0
        while not self.stop.is_set():
            rid, rec = samples.ipsec_sa(i, "out", time.time())
            code, body = client.put(f"/v1/records/ipsec_sa/{rid}", rec)
            if code in (200, 201, 202):
                self.written.append(rid)
            else:
                self.failures.append((code, body))
            i += 1
            time.sleep(0.01)


class Poller(threading.Thread):
    """Polls both nodes' status; records anything that looks like a lost link."""

    def __init__(self, nodes: list[LabNode]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.stop = threading.Event()
        self.polls = 0
        self.problems: list[str] = []
        self.roles: set[tuple[str, str]] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            for node in self.nodes:
                st = node.status()
                if st is None:
                    self.problems.append(f"{node.name}: no status")
                    continue
                self.roles.add((node.name, str(st["role"])))
                for p in st["peers"]:
                    if p["link"] != "up":
                        self.problems.append(f"{node.name}: link to {p['node']} {p['link']}")
            self.polls += 1
            time.sleep(0.02)


def keygen(path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hasyncd", "keygen", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "key id" in out.stdout


def copy_private(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    dst.chmod(0o600)


def kid_of(path: Path) -> str:
    return hs.key_id(load_psk(path).reveal()).hex()


def link_key(node: LabNode) -> tuple[str | None, str | None]:
    (peer,) = status(node)["peers"]
    return peer["key_id"], peer["key"]


def reload(cluster: LabCluster, node: LabNode, line: str) -> None:
    before = log_of(node).count(line)
    node.signal(signal.SIGHUP)
    cluster.wait(lambda: log_of(node).count(line) > before, 10, f"{node.name} to reload")


def handshake_with(psk_path: Path, link: str) -> str:
    """Dial ``link`` with the key in ``psk_path``; the label the node refuses it with, or "open"."""
    ch = Channel(
        initiator=True,
        psk=load_psk(psk_path),
        group_id=0,
        hello=Hello("intruder", bytes(16), 4242, 1 << 20, ""),
    )
    ch.start()
    host, _, port = link.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(ch.take_output())
        head = s.recv(4, socket.MSG_WAITALL)
        (size,) = struct.unpack(">I", head)
        body = s.recv(size, socket.MSG_WAITALL)
    _, kind = hs.parse_kind(body)
    if kind is hs.HsType.REJECT:
        return hs.parse_reject(body)[0]
    return "open"


def peer_of(node: LabNode) -> str:
    (peer,) = status(node)["peers"]
    return str(peer["node"])


def test_the_documented_rotation_keeps_the_link_and_retires_the_old_key(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    nodes = [primary, secondary]
    old_key = cluster.psk
    old_kid = kid_of(old_key)
    assert link_key(primary) == link_key(secondary) == (old_kid, "current")
    writer, poller = Writer(primary), Poller(nodes)
    writer.start()
    poller.start()
    try:
        # 1. hasyncd keygen the next key; 2. distribute it as psk_next_file; SIGHUP each node.
        new_key = cluster.dir / "psk.next"
        keygen(new_key)
        new_kid = kid_of(new_key)
        for node in (secondary, primary):
            mine = cluster.dir / f"{node.name}-psk.next"
            copy_private(new_key, mine)
            rewrite_config(cluster, node, {"link": {"psk_next_file": str(mine)}})
            reload(cluster, node, f"next {new_kid}")
            if node is secondary:  # the primary lacks the next key: the link stays on the old one
                time.sleep(1.0)
                assert link_key(secondary) == (old_kid, "current")
        # 3. Both hold the next key: the link re-keys onto it without dropping.
        cluster.wait(
            lambda: all(link_key(n) == (new_kid, "next") for n in nodes), 15, "the link to re-key"
        )
        # 4. Promote next to psk_file, remove psk_next_file; SIGHUP each node.
        for node in nodes:
            mine = cluster.dir / f"{node.name}-psk"
            (cluster.dir / f"{node.name}-psk.next").replace(mine)
            extra = {k: dict(v) for k, v in node.extra.items()}
            extra["link"].pop("psk_next_file")
            extra["link"]["psk_file"] = str(mine)
            node.extra = extra
            cluster.write()
            reload(cluster, node, f"-> current {new_kid}")
        time.sleep(1.0)  # writes keep flowing under the promoted key
    finally:
        writer.stop.set()
        writer.join(10)
        poller.stop.set()
        poller.join(10)

    # 5. Retire the old key: no link is under it (status says so), and it is refused.
    for node in nodes:
        st = status(node)
        assert st["link_keys"] == {"current": new_kid, "next": None}
        assert link_key(node) == (new_kid, "current")
    assert handshake_with(old_key, primary.link) == "psk_mismatch"
    assert handshake_with(old_key, secondary.link) == "psk_mismatch"
    secrets = [load_psk(path).reveal().hex() for path in (old_key, new_key)]
    old_key.unlink()

    assert poller.polls > 20 and poller.problems == [], poller.problems[:5]
    assert poller.roles == {(primary.name, "primary"), (secondary.name, "secondary")}
    assert writer.failures == [] and len(writer.written) > 50, writer.failures[:3]
    for node in nodes:
        text = log_of(node)
        assert text.count("link up:") == 1, text[-3000:]  # the peer never went down
        assert "re-keyed" in text or f"{peer_of(node)} closed the link: rekeyed" in text
        assert all(secret not in text for secret in secrets)  # key ids only, never keys
    # Every write reached the secondary, at the primary's version.
    cluster.wait(lambda: status(secondary)["version"] == status(primary)["version"], 10, "catch-up")
    for rid in writer.written:
        pc, pb = primary.client.get(f"/v1/records/ipsec_sa/{rid}")
        sc, sb = secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert pc == sc == 200 and pb["version"] == sb["version"], (rid, pb, sb)
