"""An ESP flow across a failover, checked by scapy: the harness behind the test and the lab step.

Owns the remote IPsec peer (scapy's ESP transforms: code independent of
``hasyncd.contrib.esp``), the "VIP" the peer sends to (moved to the endpoint
that announces itself active, never told any sequence number), the record of
every packet on the wire, and the checks: every gateway packet decrypts in
scapy and passes the peer's replay window, no (SPI, sequence number) pair and
no GCM nonce is used twice, every peer packet sent after the move was
accepted by the new primary's endpoint.  Needs scapy (a test extra).
"""

from __future__ import annotations

import json
import os
import socket
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

from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation, _ESPPlain
from scapy.packet import Raw

if TYPE_CHECKING:
    from hasyncd.lab import LabCluster, LabNode

PEER_WINDOW = 64  # the peer's own anti-replay window (RFC 4303 default)
MARK = struct.Struct("!IQ")  # tunnel index, packet number: the end of each inner packet
GW_SPI = 0xE5000000


@dataclass
class Tunnel:
    """One SA pair: ``out`` gateway -> peer (the peer decrypts), ``inb`` peer -> gateway."""

    index: int
    name: str
    esn: bool
    rx: Any  # scapy SA decrypting the gateway's outbound SA
    tx: Any  # scapy SA encrypting to the gateway's inbound SA
    rx_hi: int  # the high half the peer expects next (its own ESN inference)
    tx_seq: int  # the peer's last sent sequence number (full)
    records: list[tuple[str, dict[str, Any]]]
    template: bytes = b""

    def seal(self, n: int) -> tuple[int, bytes]:
        self.tx_seq += 1
        seq = self.tx_seq
        esp = _ESPPlain(
            spi=self.tx.spi,
            seq=seq & 0xFFFFFFFF,
            iv=self.tx.crypt_algo.generate_iv(),
            data=self.template[: -MARK.size] + MARK.pack(self.index, n),
            nh=4,
        )
        esp = self.tx.crypt_algo.pad(esp)
        kw = {"esn_en": self.esn, "esn": seq >> 32}
        esp = self.tx.crypt_algo.encrypt(
            self.tx, esp, self.tx.crypt_key, self.tx.crypt_icv_size, **kw
        )
        self.tx.auth_algo.sign(esp, self.tx.auth_key, **kw)
        return seq, bytes(esp)

    def open(self, wire: bytes) -> tuple[int, bytes] | None:
        """(full seq, inner data), trying the expected high half and the next; None if forged."""
        lo = struct.unpack_from("!I", wire, 4)[0]
        sa = self.rx
        icv = sa.crypt_icv_size or sa.crypt_algo.icv_size or sa.auth_algo.icv_size
        for hi in (self.rx_hi, self.rx_hi + 1) if self.esn else (0,):
            try:
                pkt = ESP(wire)
                sa.auth_algo.verify(pkt, sa.auth_key, esn_en=self.esn, esn=hi)
                plain = sa.crypt_algo.decrypt(sa, pkt, sa.crypt_key, icv, esn_en=self.esn, esn=hi)
            except Exception:  # noqa: S112 - scapy raises several types on a bad ICV
                continue
            self.rx_hi = hi
            return hi << 32 | lo, bytes(plain.data)
        return None


def _sa(alg: str, spi: int, esn: bool, hi: int, keys: tuple[bytes, bytes]) -> Any:
    if alg == "gcm":
        kw: dict[str, Any] = {"crypt_algo": "AES-GCM", "crypt_key": keys[0], "auth_algo": "NULL"}
    else:
        kw = {"crypt_algo": "AES-CBC", "crypt_key": keys[0], "auth_algo": "SHA2-256-128"}
        kw["auth_key"] = keys[1]
    return SecurityAssociation(ESP, spi=spi, esn_en=esn, esn=hi, **kw)  # type: ignore[no-untyped-call]


def make_tunnels(peer_port: int, now: float) -> list[Tunnel]:
    """An AES-GCM pair with ESN (high half 1) and an AES-CBC + HMAC-SHA-256 pair without."""
    out: list[Tunnel] = []
    for index, (alg, esn) in enumerate((("gcm", True), ("cbc", False))):
        base = (1 << 32) if esn else 0
        recs = []
        sas = []
        for d, direction in enumerate(("out", "in")):
            spi = GW_SPI + 2 * index + d + 1
            keys = (os.urandom(36 if alg == "gcm" else 32), os.urandom(32))
            rec: dict[str, Any] = {
                "tunnel": f"esp-{alg}",
                "direction": direction,
                "proto": "esp",
                "spi": spi,
                "src": "127.0.0.1",
                "dst": "127.0.0.1",
                "mode": "tunnel",
                "enc": {
                    "alg": "rfc4106(gcm(aes))" if alg == "gcm" else "cbc(aes)",
                    "key": keys[0].hex(),
                },
                "auth": None if alg == "gcm" else {"alg": "hmac(sha256)", "key": keys[1].hex()},
                "encap": {"type": "espinudp", "sport": 4500, "dport": peer_port}
                if direction == "out"
                else {"type": "espinudp", "sport": peer_port, "dport": 4500},
                "esn": esn,
                "seq": base + (1000 if direction == "out" else 0),
                "replay_window": 0 if direction == "out" else 64,
                "created_at": int(now),
            }
            recs.append((f"esp-{spi:08x}@127.0.0.1", rec))
            sas.append(_sa(alg, spi, esn, 1 if esn else 0, keys))
        t = Tunnel(index, f"esp-{alg}", esn, sas[0], sas[1], 1 if esn else 0, base, recs)
        inner = IP(src="10.1.0.1", dst="10.0.0.1") / UDP(sport=1000, dport=7, chksum=0)
        t.template = bytes(inner / Raw(bytes(64)))
        out.append(t)
    return out


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_drops(port: int) -> int:
    """The kernel's drop count of the UDP socket bound to ``port`` (/proc/net/udp)."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) == port:
                return int(cols[-1])
    return 0


@dataclass
class Endpoint:
    node: LabNode
    port: int
    state_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, mode: str, lease_block: int) -> None:
        cfg = self.node.dir / f"{self.node.name}-esp.toml"
        cfg.write_text(
            "[esp]\n"
            f'api = "{self.node.socket}"\nlisten = "127.0.0.1:{self.port}"\nmode = "{mode}"\n'
            f"report_ms = 100\npoll_ms = 50\nlease_block = {lease_block}\n"
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
class Peer:
    tunnels: list[Tunnel]
    rate: int  # packets per second per tunnel, peer -> gateway
    port: int  # the UDP port the SAs name as the peer's
    sock: socket.socket = field(init=False)
    target: tuple[str, int] | None = None
    sent: list[tuple[int, int, int, tuple[str, int] | None]] = field(default_factory=list)
    received: list[tuple[int, bytes]] = field(default_factory=list)  # (source port, ESP)
    probes: list[tuple[int, int]] = field(default_factory=list)  # (SPI, seq) sent to a secondary
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)

    def send_loop(self) -> None:
        t0, n = time.monotonic(), 0
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while n < due and not self.stop.is_set():
                for t in self.tunnels:
                    seq, wire = t.seal(n)
                    target = self.target  # read per packet: the VIP may move
                    if target is not None:
                        try:
                            self.sock.sendto(wire, target)
                        except OSError:
                            target = None
                    self.sent.append((t.index, n, seq, target))
                n += 1
            time.sleep(0.002)

    def recv_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received.append((addr[1], data))


@dataclass
class Result:
    sent: int = 0
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
    lost_during_failover: int = 0
    new_primary_first_seq: dict[int, int] = field(default_factory=dict)
    peer_kernel_drops: int = 0  # gateway packets lost at the peer's socket: unrecorded
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
) -> Result:
    primary, secondary = cluster.wait_pair()
    peer_port = udp_port()
    tunnels = make_tunnels(peer_port, time.time())
    for t in tunnels:
        for rid, rec in t.records:
            code, body = primary.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
            assert code == 201, (code, body)
    eps = {
        n.name: Endpoint(n, udp_port(), n.dir / f"{n.name}-esp.json") for n in (primary, secondary)
    }
    for ep in eps.values():
        ep.start(mode, lease_block)
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
        old_epoch = old.state().get("epoch")
        primary.kill()
        old.stop(sig_kill=True)
        t_kill = time.monotonic()
        cluster.wait(
            lambda: new.state().get("active") is True and new.state().get("epoch") != old_epoch,
            20,
            "the new primary's endpoint",
        )
        drops0, stats0 = udp_drops(new.port), new.state().get("stats", {})
        peer.target = ("127.0.0.1", new.port)  # the VIP moves to the announced endpoint
        say(
            f"   {secondary.name}'s endpoint active {time.monotonic() - t_kill:.2f} s after the "
            "kill; the peer's VIP moves there"
        )
        time.sleep(after_s)
        peer.stop.set()
        for th in threads:
            th.join(5)
        time.sleep(0.5)  # the endpoint's last state write
        stats = Counter(new.state().get("stats", {}))
        stats.subtract(stats0)  # what the endpoint counted after the VIP moved
        kernel_drops = udp_drops(new.port) - drops0
        peer_drops = udp_drops(peer_port)
    finally:
        for ep in eps.values():
            ep.stop()
        if peer is not None:
            peer.stop.set()
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
    res.peer_kernel_drops = peer_drops
    return res


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
    res = Result(sent=len(peer.sent))
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
            res.new_primary_first_seq.setdefault(spi, seq)
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
        f"{res.sent} peer packets sent, {res.echoes} came back through the tunnels; "
        f"{res.lost} lost ({res.lost_during_failover} around the failover); "
        f"after the failover {res.accepted_after}/{res.sent_after} accepted by the new primary "
        f"(kernel socket drops {res.kernel_drops_after}, refused {res.rejected_after or 0}); "
        f"gateway packets per node {res.from_gateways} (peer socket drops "
        f"{res.peer_kernel_drops}), undecryptable {res.undecryptable}, "
        f"refused by the peer's replay window {res.replay_refused or 0}; "
        f"(SPI, seq) pairs used twice: {len(res.reused)}, GCM nonces used twice: "
        f"{res.nonce_reused}; before the failover the secondary's endpoint got "
        f"{res.secondary_probe[0]} valid packets, refused {res.secondary_probe[1]} as inactive, "
        f"sent {res.secondary_probe[2]}"
    )
