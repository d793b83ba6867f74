"""An ESP flow across a failover, checked by scapy: the harness behind the test and the lab step.

Owns the run: the SA records written to the primary, one reference endpoint
per node, the "VIP" the peer (``hasyncd.contrib.esppeer``) sends to, moved
to the endpoint that announces itself active (the peer is never told a
sequence number), the kill -9, and the checks over every packet on the wire:
every gateway packet decrypts in scapy and passes the peer's replay window,
no (SPI, sequence number) pair and no GCM nonce is used twice, every peer
packet sent after the move was accepted by the new primary's endpoint.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasyncd.contrib.esppeer import MARK, Peer, Tunnel, make_tunnels, udp_drops, udp_port

if TYPE_CHECKING:
    from hasyncd.labcluster import LabCluster, LabNode

PEER_WINDOW = 64  # the peer's own anti-replay window (RFC 4303 default)


@dataclass
class Endpoint:
    node: LabNode
    port: int
    state_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, mode: str, lease_block: int, lease_alone: str) -> None:
        cfg = self.node.dir / f"{self.node.name}-esp.toml"
        cfg.write_text(
            "[esp]\n"
            f'api = "{self.node.socket}"\nlisten = "127.0.0.1:{self.port}"\nmode = "{mode}"\n'
            f"report_ms = 100\npoll_ms = 50\nlease_block = {lease_block}\n"
            f'lease_alone = "{lease_alone}"\n'
            f'state_file = "{self.state_file}"\n'
        )
        log = (self.node.dir / f"{self.node.name}-esp.log").open("ab")
        cmd = [sys.executable, "-m", "hasyncd", "esp-endpoint", "--config", str(cfg)]
        self.proc = subprocess.Popen(  # noqa: S603 - this very program
            cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if sig_kill else self.proc.terminate)()
            self.proc.wait(10)


@dataclass
class Result:
    sent: int = 0
    sending_s: float = 0.0
    sent_after: int = 0  # peer packets sent to the new primary's endpoint
    accepted_after: int = 0
    rejected_after: dict[str, int] = field(default_factory=dict)
    kernel_drops_after: int = 0
    from_gateways: dict[str, int] = field(default_factory=dict)
    undecryptable: int = 0
    replay_refused: dict[str, int] = field(default_factory=dict)  # by endpoint
    reused: list[tuple[int, int]] = field(default_factory=list)
    nonce_reused: int = 0
    echoes: int = 0
    lost: int = 0
    lost_during_failover: int = 0  # up to the new primary's endpoint going active
    held_for_replay: int = 0  # lost while the test's replay attack held the VIP back
    new_stats: dict[str, int] = field(default_factory=dict)  # the new endpoint's, after the move
    key_leaks: list[str] = field(default_factory=list)  # endpoint files quoting key material
    old_last_seq: dict[int, int] = field(default_factory=dict)  # by outbound SPI
    new_first_seq: dict[int, int] = field(default_factory=dict)
    old_leases_granted: int = 0  # leases the old primary's endpoint held before the kill
    peer_kernel_drops: int = 0  # gateway packets lost at the peer's socket: unrecorded
    # Replays, to the new primary before the VIP moves, of every packet sent to the old
    # one: (replayed, at or below the replicated seq, refused, accepted, old socket drops)
    replay: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    secondary_probe: tuple[int, int, int] = (0, 0, 0)  # sent to it, refused as inactive, answered


def run(
    cluster: LabCluster,
    mode: str,
    say: Callable[[str], None],
    *,
    rate: int = 500,
    before_s: float = 1.5,
    after_s: float = 1.5,
    lease_block: int = 1024,
    lease_alone: str = "counters",
) -> Result:
    primary, secondary = cluster.wait_pair()
    peer_port = udp_port()
    tunnels = make_tunnels(peer_port, time.time())
    for t in tunnels:
        for rid, rec in t.records:
            code, body = primary.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
            assert code in {201, 202}, (code, body)  # 202: not yet replicated, waited for below
    rids = [rid for t in tunnels for rid, _ in t.records]
    cluster.wait(
        lambda: all(secondary.client.get(f"/v1/records/ipsec_sa/{r}")[0] == 200 for r in rids),
        20,
        "the SAs on the secondary",
    )
    eps = {
        n.name: Endpoint(n, udp_port(), n.dir / f"{n.name}-esp.json") for n in (primary, secondary)
    }
    for ep in eps.values():
        ep.start(mode, lease_block, lease_alone)
    old, new = eps[primary.name], eps[secondary.name]
    peer: Peer | None = None
    try:
        cluster.wait(lambda: old.state().get("active") is True, 20, "the primary's endpoint")
        cluster.wait(lambda: "stats" in new.state(), 20, "the secondary's endpoint")
        peer = Peer(tunnels, rate, peer_port)
        probe = _probe(peer, new)
        peer.target = ("127.0.0.1", old.port)
        threads = [
            threading.Thread(target=f, daemon=True) for f in (peer.send_loop, peer.recv_loop)
        ]
        for th in threads:
            th.start()
        time.sleep(before_s)
        say(
            f"   flowing: {len(peer.sent)} packets sent, {len(peer.received)} back; "
            f"kill -9 {primary.name} and its endpoint"
        )
        old_state, old_drops = old.state(), udp_drops(old.port)
        old_epoch = old_state.get("epoch")
        k_kill = len(peer.sent)  # what the peer sent before the kill (the old one may have it)
        primary.kill()
        old.stop(sig_kill=True)
        t_kill = time.monotonic()
        cluster.wait(
            lambda: new.state().get("active") is True and new.state().get("epoch") != old_epoch,
            20,
            "the new primary's endpoint",
        )
        k_active = len(peer.sent)
        replay = _replay(peer, tunnels, new, old.port, k_kill)
        held = len(peer.sent) - k_active  # sent to the dead node while the replays ran
        drops0, stats0 = udp_drops(new.port), new.state().get("stats", {})
        peer.target = ("127.0.0.1", new.port)  # the VIP moves to the announced endpoint
        say(
            f"   {secondary.name}'s endpoint active {time.monotonic() - t_kill:.2f} s after the "
            "kill; the peer's VIP moves there"
        )
        time.sleep(after_s)
        peer.stop.set()
        threads[0].join(5)
        time.sleep(0.5)  # the last replies, and the endpoint's last state write
        peer.done.set()
        threads[1].join(5)
        stats = Counter(new.state().get("stats", {}))
        stats.subtract(stats0)  # what the endpoint counted after the VIP moved
        kernel_drops = udp_drops(new.port) - drops0
        peer_drops = udp_drops(peer_port)
    finally:
        for ep in eps.values():
            ep.stop()
        if peer is not None:
            peer.stop.set()
            peer.done.set()
            peer.sock.close()
    res = analyse(
        peer,
        tunnels,
        {old.port: old.node.name, new.port: new.node.name},
        new.port,
        stats,
        kernel_drops,
    )
    res.secondary_probe = probe
    res.replay = (*replay, old_drops)
    res.held_for_replay = held
    res.new_stats = {k: v for k, v in stats.items() if v}
    res.key_leaks = _key_leaks(tunnels, list(eps.values()))
    res.lost_during_failover -= held
    res.old_leases_granted = int(old_state.get("stats", {}).get("leases_granted", 0))
    res.peer_kernel_drops = peer_drops
    return res


def _replay(
    peer: Peer, tunnels: list[Tunnel], new: Endpoint, old_port: int, k: int
) -> tuple[int, int, int, int]:
    """An attacker replays what the peer sent to the old primary before the kill.

    Returns (replayed, covered, refused, accepted); covered: at or below the
    inbound ``seq`` the new primary's record shows.  Paced, so that the new
    endpoint's socket does not drop any.
    """
    top = {}
    for t in tunnels:
        rid = next(r for r, rec in t.records if rec["direction"] == "in")
        code, body = new.node.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200, body
        top[t.tx.spi] = int(body["record"]["seq"])
    old = [
        (tunnels[i].tx.spi, seq, peer.wires[j])
        for j, (i, _, seq, tgt) in enumerate(peer.sent[:k])
        if tgt == ("127.0.0.1", old_port)
    ]
    before = Counter(new.state().get("stats", {}))
    for j, (_, _, wire) in enumerate(old):
        peer.sock.sendto(wire, ("127.0.0.1", new.port))
        if j % 50 == 49:
            time.sleep(0.01)

    def delta() -> tuple[int, int]:
        """(refused, accepted) since the replay began.  With ESN a packet left of the
        window is taken for the next 2^32 block (RFC 4303 A2.2) and fails its ICV."""
        now = Counter(new.state().get("stats", {}))
        now.subtract(before)
        return now["rx_replay"] + now["rx_auth_failed"], now["rx_ok"]

    deadline = time.monotonic() + 5
    while sum(delta()) < len(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    refused, accepted = delta()
    covered = sum(1 for spi, seq, _ in old if seq <= top[spi])
    return len(old), covered, refused, accepted


def _key_leaks(tunnels: list[Tunnel], eps: list[Endpoint]) -> list[str]:
    """Endpoint logs and state files that contain any SA key (or its first 8 bytes) in hex."""
    keys = [
        rec[f]["key"][:16]
        for t in tunnels
        for _, rec in t.records
        for f in ("enc", "auth")
        if rec.get(f)
    ]
    leaks = []
    for ep in eps:
        for path in (ep.node.dir / f"{ep.node.name}-esp.log", ep.state_file):
            text = path.read_text() if path.exists() else ""
            leaks += [f"{path.name}: {k[:4]}..." for k in keys if k in text]
    return leaks


def _probe(peer: Peer, secondary: Endpoint) -> tuple[int, int, int]:
    """Valid packets sent to the secondary's endpoint: (sent, it refused as inactive, it sent)."""
    for t in peer.tunnels:
        for k in range(5):
            seq, wire = t.seal(10**9 + k)
            peer.sock.sendto(wire, ("127.0.0.1", secondary.port))
            peer.probes.append((t.tx.spi, seq))
    answered, deadline = 0, time.monotonic() + 0.5
    while time.monotonic() < deadline:
        try:
            _, addr = peer.sock.recvfrom(4096)
        except TimeoutError:
            continue
        answered += addr[1] == secondary.port
    inactive = int(secondary.state().get("stats", {}).get("rx_inactive", 0))
    return len(peer.probes), inactive, answered


def analyse(  # noqa: PLR0917 - one call site, the harness
    peer: Peer,
    tunnels: list[Tunnel],
    names: dict[int, str],
    new_port: int,
    stats: Counter[str],
    kernel_drops: int,
) -> Result:
    res = Result(sent=len(peer.sent), sending_s=peer.sending_s)
    after = [s for s in peer.sent if s[3] == ("127.0.0.1", new_port)]
    res.sent_after = len(after)
    res.accepted_after = int(stats.get("rx_ok", 0))
    res.rejected_after = {
        k: v for k, v in stats.items() if k.startswith("rx_") and k not in ("rx_ok",) and v
    }
    res.kernel_drops_after = kernel_drops
    by_spi = {t.rx.spi: t for t in tunnels}
    used: Counter[tuple[int, int]] = Counter((tunnels[i].tx.spi, seq) for i, _, seq, _ in peer.sent)
    used.update(peer.probes)
    nonces: Counter[tuple[int, bytes]] = Counter()
    top: dict[int, int] = {}
    seen: dict[int, set[int]] = {spi: set() for spi in by_spi}
    echoed: set[tuple[int, int]] = set()
    for port, wire in peer.received:
        name = names.get(port, str(port))
        res.from_gateways[name] = res.from_gateways.get(name, 0) + 1
        spi = struct.unpack_from("!I", wire)[0]
        t = by_spi.get(spi)
        opened = None if t is None else t.open(wire)
        if t is None or opened is None:
            res.undecryptable += 1
            continue
        seq, inner = opened
        used[(spi, seq)] += 1
        if t.index == 0:  # GCM: the explicit IV is the nonce's variable part
            nonces[(spi, wire[8:16])] += 1
        # the peer's own RFC 4303 receive check, in arrival order
        hi = top.get(spi, 0)
        if seq in seen[spi] or seq + PEER_WINDOW <= hi:
            res.replay_refused[name] = res.replay_refused.get(name, 0) + 1
        seen[spi].add(seq)
        top[spi] = max(hi, seq)
        if port == new_port:
            res.new_first_seq.setdefault(spi, seq)
        else:
            res.old_last_seq[spi] = max(seq, res.old_last_seq.get(spi, 0))
        echoed.add(MARK.unpack(inner[-MARK.size :]))
    res.reused = sorted(k for k, v in used.items() if v > 1)
    res.nonce_reused = sum(1 for v in nonces.values() if v > 1)
    res.echoes = len(echoed)
    res.lost = sum(1 for i, n, _, _ in peer.sent if (i, n) not in echoed)
    first_after = min((n for _, n, _, tgt in after), default=0)
    last_ok = max((n for i, n in echoed if n < first_after), default=0)
    res.lost_during_failover = sum(
        1 for i, n, _, _ in peer.sent if last_ok < n < first_after and (i, n) not in echoed
    )
    return res


def summary(res: Result) -> str:
    return (
        f"{res.sent} peer packets sent in {res.sending_s:.1f} s "
        f"({res.sent / max(res.sending_s, 1e-9):.0f}/s), "
        f"{res.echoes} came back through the tunnels; "
        f"{res.lost} lost ({res.lost_during_failover} around the failover, "
        f"{res.held_for_replay} while the replay check held the VIP back); "
        f"after the failover {res.accepted_after}/{res.sent_after} accepted by the new primary "
        f"(kernel socket drops {res.kernel_drops_after}, refused {res.rejected_after or 0}); "
        f"gateway packets per node {res.from_gateways} (peer socket drops "
        f"{res.peer_kernel_drops}), undecryptable {res.undecryptable}, "
        f"refused by the peer's replay window {res.replay_refused or 0}; "
        f"(SPI, seq) pairs used twice: {len(res.reused)}, GCM nonces used twice: "
        f"{res.nonce_reused}; before the failover the secondary's endpoint got "
        f"{res.secondary_probe[0]} valid packets, refused {res.secondary_probe[1]} as inactive, "
        f"sent {res.secondary_probe[2]}; outbound seq jump at the failover "
        + ", ".join(
            f"{spi:08x}: {res.old_last_seq.get(spi)} -> {first}"
            for spi, first in sorted(res.new_first_seq.items())
        )
        + f"; leases granted to the old primary's endpoint {res.old_leases_granted}; "
        f"{res.replay[0]} packets sent to the old primary replayed to the new one: "
        f"{res.replay[1]} at or below the replicated inbound seq, {res.replay[2]} refused, "
        f"{res.replay[3]} accepted (the stale-window exposure)"
    )
