"""Everything the node core needs to know about its configuration, in core units (seconds)."""

from __future__ import annotations

from dataclasses import dataclass

from hasyncd.core.backlog import BACKLOG_MIB_DEFAULT, BACKLOG_S_DEFAULT
from hasyncd.core.keys import Keyring
from hasyncd.secret import Secret


@dataclass(frozen=True)
class CoreSettings:
    name: str
    tag: int  # 1..65535, unique in the cluster: the low 16 bits of every epoch this node mints
    priority: int
    group_id: int
    psk: Secret
    peers: tuple[str, ...] = ()  # link addresses to dial, "host:port"
    listen: str = ""
    heartbeat_interval: float = 0.1
    lost_threshold: int = 5
    holddown: float = 2.0
    # Replication bytes a peer may have in flight to us: bounds how far a
    # heartbeat can queue behind bulk data and how much a peer buffers.
    window: int = 1 << 20
    override: bool = False
    preempt_delay: float = 60.0
    uptime_margin: float = 300.0
    max_flaps: int = 3
    flap_window: float = 900.0
    esp_seq_margin: int = 1 << 16
    seq_safety_factor: float = 2.0  # see [promotion] seq_safety_factor in README
    inbound_window: str = "replicated"  # or "advance" (hasyncd.core.seqview)
    rekey_rate: float = 200.0  # rekey governor: releases per second
    rekey_jitter: float = 0.5
    tombstone_ttl: float = 3600.0
    # The replication backlog (hasyncd.core.backlog): its byte budget and the
    # age of the oldest write it keeps; below tombstone_ttl.
    backlog_bytes: int = BACKLOG_MIB_DEFAULT << 20
    backlog_s: float = float(BACKLOG_S_DEFAULT)
    handshake_timeout: float = 3.0
    handover_timeout: float = 3.0
    reconnect_min: float = 0.1
    reconnect_max: float = 1.0
    monitors: tuple[str, ...] = ()
    psk_next: Secret | None = None  # the next cluster key during a rotation (core.keys)

    def keyring(self) -> Keyring:
        return Keyring.of(self.psk, self.psk_next)

    @property
    def lost_timeout(self) -> float:
        return self.heartbeat_interval * self.lost_threshold
