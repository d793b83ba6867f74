"""The remote IPsec peer of the ESP failover harness, built on scapy's ESP code.

Owns the peer's side of the two test tunnels (an AES-GCM ESN pair and an
AES-CBC + HMAC-SHA-256 pair): the ``ipsec_sa`` records the gateways get, the
scapy SAs that seal what the peer sends and open what the gateways send (its
own ESN inference, none of ``hasyncd.contrib.esp``), and the paced sender and
the receiver that records every datagram on the wire.  Needs scapy.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation, _ESPPlain
from scapy.packet import Raw

MARK = struct.Struct("!IQ")  # tunnel index, packet number: the end of each inner packet
GW_SPI = 0xE5000000


@dataclass
class Tunnel:
    """One SA pair: ``rx`` opens what the gateway sends, ``tx`` seals what the peer sends."""

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
class Peer:
    tunnels: list[Tunnel]
    rate: int  # packets per second per tunnel, peer -> gateway
    port: int  # the UDP port the SAs name as the peer's
    sock: socket.socket = field(init=False)
    target: tuple[str, int] | None = None
    sent: list[tuple[int, int, int, tuple[str, int] | None]] = field(default_factory=list)
    wires: list[bytes] = field(default_factory=list)  # sent[k]'s packet is wires[k]
    sending_s: float = 0.0  # how long the sender ran
    received: list[tuple[int, bytes]] = field(default_factory=list)  # (source port, ESP)
    probes: list[tuple[int, int]] = field(default_factory=list)  # (SPI, seq) sent to a secondary
    stop: threading.Event = field(default_factory=threading.Event)  # the sender
    done: threading.Event = field(default_factory=threading.Event)  # the receiver

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
                    self.wires.append(wire)
                    self.sent.append((t.index, n, seq, target))
                n += 1
            time.sleep(0.002)
        self.sending_s = time.monotonic() - t0

    def recv_loop(self) -> None:
        while not self.done.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received.append((addr[1], data))
