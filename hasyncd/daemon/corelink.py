"""The node core's wiring to the shell: its settings from the config, its clock, its links.

``LinkProtocol`` is one HA link connection: every asyncio callback goes
straight into the core and the shell's ``flush``.  It sees the shell through
``LinkHost`` (no import of ``hasyncd.daemon.shell``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from hasyncd.config import Config
from hasyncd.core.node import NodeCore
from hasyncd.core.settings import CoreSettings


class LinkHost(Protocol):
    """What a link connection needs of the shell."""

    core: NodeCore
    transports: dict[int, asyncio.Transport]
    clock: Callable[[], float]
    wall: Callable[[], float]

    def new_conn_id(self) -> int: ...
    def flush(self) -> None: ...
    def links_closed(self) -> None: ...


BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def core_clock() -> float:
    """The core's clock: monotonic, and counting time the machine was suspended.

    CLOCK_BOOTTIME (Linux) keeps running while a VM is paused or a host is
    suspended; CLOCK_MONOTONIC does not.  With it a primary that was frozen
    that way sees the gap as its own stall and fences itself, exactly as
    after a SIGSTOP, instead of taking writes as if no time had passed.
    """
    return time.clock_gettime(BOOTTIME)


def wall_clock() -> float:
    """The core's other clock input: Unix time, for expiries, record dates and status."""
    return time.time()


def core_settings(config: Config) -> CoreSettings:
    node, link = config.node, config.link
    return CoreSettings(
        name=node.name,
        tag=node.id,
        priority=node.priority,
        group_id=link.group_id,
        psk=config.psk,
        psk_next=config.psk_next,
        peers=tuple(str(a) for a in link.peers),
        listen=str(link.listen),
        heartbeat_interval=link.heartbeat_interval_ms / 1000.0,
        lost_threshold=link.heartbeat_lost_threshold,
        holddown=link.hello_holddown_ms / 1000.0,
        window=link.window_kib * 1024,
        override=node.override,
        preempt_delay=node.preempt_delay_s,
        uptime_margin=node.uptime_margin_s,
        max_flaps=node.max_flaps,
        esp_seq_margin=config.promotion.esp_seq_margin,
        seq_safety_factor=config.promotion.seq_safety_factor,
        inbound_window=config.promotion.inbound_window,
        rekey_rate=config.promotion.rekey_rate,
        rekey_jitter=config.promotion.rekey_jitter,
        tombstone_ttl=float(config.store.tombstone_ttl_s),
        backlog_bytes=config.replication.backlog_mib << 20,
        backlog_s=float(config.replication.backlog_s),
        handshake_timeout=link.handshake_timeout_ms / 1000.0,
        handover_timeout=config.promotion.handover_timeout_ms / 1000.0,
        monitors=node.monitor,
    )


class LinkProtocol(asyncio.Protocol):
    """One HA link connection; every callback goes straight into the core."""

    def __init__(self, daemon: LinkHost, initiator: bool, address: str | None = None) -> None:
        self.daemon = daemon
        self.initiator = initiator
        self.address = address
        self.conn_id = daemon.new_conn_id()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        d = self.daemon
        d.transports[self.conn_id] = transport
        if self.address is None:
            peer = transport.get_extra_info("peername")
            self.address = f"{peer[0]}:{peer[1]}" if peer else "?"
        d.core.connection_made(
            self.conn_id,
            initiator=self.initiator,
            address=self.address,
            now=d.clock(),
            wall=d.wall(),
        )
        d.flush()

    def data_received(self, data: bytes) -> None:
        d = self.daemon
        d.core.receive_data(self.conn_id, data, d.clock(), wall=d.wall())
        d.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        d = self.daemon
        d.transports.pop(self.conn_id, None)
        if not d.transports:
            d.links_closed()
        d.core.connection_lost(self.conn_id, d.clock(), wall=d.wall())
        d.flush()
