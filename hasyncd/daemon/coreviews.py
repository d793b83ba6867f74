"""The narrow views of ``hasyncd.daemon.views`` implemented over the node core.

This is the one shell module that reads the core's internals (``core.roles``,
``core.peers``): when the core's structure changes, only this file follows.
The API and the metrics see the views, never the core or the Daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hasyncd.core.counterpath import Outcome, update_counters, write_leases
from hasyncd.core.node import NodeCore
from hasyncd.core.replication import writes_behind
from hasyncd.core.seqview import view
from hasyncd.daemon.views import NodeGauges, PeerGauges, SessionGauges, Written
from hasyncd.policy import KIND_BY_CODE
from hasyncd.records import Kind, Record
from hasyncd.store import Entry
from hasyncd.wire.messages import Role


class CoreWriter:
    """The core's local writes, and the shell's flush that sends what they queued."""

    def __init__(
        self, core: NodeCore, flush: Callable[[], None], wall: Callable[[], float]
    ) -> None:
        self._core = core
        self.flush = flush
        self._wall = wall

    def write(self, record: Record, now: float) -> Written:
        return self._core.write(record, now, wall=self._wall())

    def delete(self, kind: int, rid: str, now: float) -> Written | None:
        return self._core.delete(kind, rid, now, wall=self._wall())

    def write_batch(self, ops: list[tuple[int, str, Record | None]], now: float) -> list[object]:
        return list(self._core.write_batch(ops, now, wall=self._wall()))


class CoreReader:
    """The store, with records shown through the core's promotion history (seqview)."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    def get(self, kind: int, rid: str, wall: float) -> Entry | None:
        return self._core.store.get(kind, rid, wall)

    def page(
        self, kind: int, after: str | None, limit: int, wall: float
    ) -> list[tuple[str, Entry]]:
        return self._core.store.page(kind, after, limit, wall)

    def shown(self, kind: Kind, rid: str, entry: Entry) -> dict[str, Any]:
        assert entry.blob is not None
        promotions = self._core.promotions
        wire = view(promotions, kind.code, rid, entry.version, kind.decode(entry.blob))
        return kind.to_json(wire)


class CoreDataPlane:
    """Counter updates, leases and the rekey governor, asked of the core."""

    def __init__(self, core: NodeCore, wall: Callable[[], float]) -> None:
        self._core = core
        self._wall = wall

    def update_counters(self, items: list[Any], now: float) -> Outcome:
        return update_counters(self._core, items, now, wall=self._wall())

    def write_leases(self, items: list[Any], now: float) -> Outcome:
        return write_leases(self._core, items, now, wall=self._wall())

    def has_in_sync_secondary(self) -> bool:
        return self._core.watermark is not None

    def count(self, counter: str, label: str, n: int) -> None:
        self._core.count(counter, label, n)

    def rekey(self) -> dict[str, Any]:
        gov = self._core.governor
        return {**gov.status(), "recent": list(gov.recent)}


class CoreCluster:
    """Status, role history and manual failover, read from (and asked of) the core."""

    def __init__(
        self,
        core: NodeCore,
        flush: Callable[[], None],
        wait_role: Callable[[Callable[[], bool], float], Awaitable[bool]],
        wall: Callable[[], float],
    ) -> None:
        self._core = core
        self._wall = wall
        self._flush = flush
        self._wait_role = wait_role

    def status(self, now: float) -> dict[str, object]:
        return self._core.status(now, wall=self._wall())

    def history(self) -> list[dict[str, object]]:
        return self._core.roles.history.recent()

    def role(self) -> Role:
        return self._core.roles.role

    def epoch(self) -> int:
        return self._core.roles.epoch

    def request_failover(self, now: float) -> str:
        target = self._core.request_failover(now, wall=self._wall())
        self._flush()
        return target

    def wait_not_primary(self, timeout: float) -> Awaitable[bool]:
        roles = self._core.roles
        return self._wait_role(lambda: not roles.is_primary, timeout)


def node_gauges(core: NodeCore, now: float, wall: float) -> NodeGauges:
    """The core's state as ``/metrics`` shows it, at ``now`` (and Unix time ``wall``)."""
    roles = core.roles
    current = core.version
    keys = core.s.keyring()
    peers = []
    for p in core.peers.values():
        kid = p.conn.channel.key_id if p.conn is not None else None
        s = p.session
        session = (
            None
            if s is None
            else SessionGauges(
                pending=len(s.pending),
                in_sync=s.in_sync,
                lag_seconds=p.lag.lag(now),
                lag_records=writes_behind(s.acked, current),
            )
        )
        peers.append(
            PeerGauges(
                name=p.name,
                up=p.up,
                link=p.conn is not None,
                silence=now - p.last_rx if p.last_rx else 0.0,
                rtt=p.rtt,
                in_flight=p.flow.in_flight,
                session=session,
                key=None if kid is None else (kid.hex(), keys.name_of(kid) or "retired"),
            )
        )
    return NodeGauges(
        stats={name: dict(counts) for name, counts in core.stats.items()},
        role=roles.role,
        epoch=roles.epoch,
        in_sync=roles.is_primary or roles.in_sync,
        fenced=bool(roles.fence),
        suspended=roles.suspended_since is not None,
        records={KIND_BY_CODE[code]: n for code, n in core.store.counts().items()},
        peers=tuple(peers),
        freshness=core.freshness.status(wall),
        rekey_pending=len(core.governor.queue),
    )
