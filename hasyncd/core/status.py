"""``GET /v1/status``: a read-only view of a node core, explaining why it holds its role."""

from __future__ import annotations

from typing import Protocol

from hasyncd.core.backlog import Backlog
from hasyncd.core.freshness import Freshness
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.keys import Keyring
from hasyncd.core.peers import Peer
from hasyncd.core.replication import writes_behind
from hasyncd.core.roles import RoleManager
from hasyncd.core.settings import CoreSettings
from hasyncd.core.splitbrain import SplitBrainState
from hasyncd.policy import KIND_BY_CODE
from hasyncd.store import Store, unpack_version
from hasyncd.wire.messages import Role


class StatusSource(Protocol):
    """The node core's state a status reads (``hasyncd.core.node.NodeCore``)."""

    s: CoreSettings
    peers: dict[str, Peer]
    store: Store
    started: float
    backlog: Backlog
    freshness: Freshness
    governor: RekeyGovernor
    roles: RoleManager
    split_brain: SplitBrainState

    @property
    def version(self) -> int: ...


def version_json(version: int) -> dict[str, int]:
    epoch, seq = unpack_version(version)
    return {"epoch": epoch, "seq": seq}


def node_status(core: StatusSource, now: float, wall: float) -> dict[str, object]:
    """The status at ``now``; ``wall`` (Unix time, an input like ``now``) dates it."""
    keys = core.s.keyring()
    peers = [
        peer_status(p, now, core.version, keys)
        for p in sorted(core.peers.values(), key=lambda p: p.name)
    ]
    known = {p.address for p in core.peers.values()}
    # Configured addresses that never answered: an operator wants to see them too.
    peers += [
        {
            "node": None,
            "address": a,
            "link": "down",
            "role": None,
            "in_sync": False,
            "last_seen_ms": None,
            "rtt_ms": None,
            "key_id": None,
            "key": None,
            "replication": None,
        }
        for a in core.s.peers
        if a not in known
    ]
    out: dict[str, object] = {
        "node": core.s.name,
        "priority": core.s.priority,
        "peers": peers,
        "records": {KIND_BY_CODE[k]: n for k, n in core.store.counts().items()},
        "version": version_json(core.version),
        "uptime_s": round(now - core.started, 3),
        "clock": wall,
        # Key ids (never keys) of the link keys this node holds (PROTOCOL.md 5.2.1).
        "link_keys": keys.ids(),
        # A primary's replication backlog (what a reconnecting secondary can resume from).
        "backlog": core.backlog.status(now) if core.roles.is_primary else None,
        "counters": core.freshness.status(wall),
        "rekey": core.governor.status(),
    }
    out.update(role_status(core.roles, core.split_brain.status(), now))
    return out


def role_status(
    roles: RoleManager, split_brain: dict[str, object] | None, now: float
) -> dict[str, object]:
    f = roles.follower
    promo: dict[str, object] | None = None
    if roles.promotion is not None:
        promo = {**roles.promotion.progress(), "reason": roles.promotion.reason, "complete": False}
    elif roles.last_promotion is not None:
        promo = {**roles.last_promotion, "complete": True}
    return {
        "role": roles.role.name.lower(),
        "epoch": roles.epoch,
        "primary": roles.primary,
        "role_reason": roles.reason,
        "in_sync": roles.is_primary or roles.in_sync,
        "sync": None
        if f is None
        else {"primary": f.primary, "state": f.state.value, "snapshot_records": f.received},
        **roles.duties.status(now),
        "suspended": roles.damper.status(now),
        "role_changes_in_window": len(roles.damper.changes),
        "monitors": {"configured": list(roles.s.monitors), "down": list(roles.monitors_down)},
        "split_brain": split_brain,
        "promotion": promo,
        "stopping": None if roles.stop is None else roles.stop.status(now),
        "role_history": roles.history.recent(5),
    }


def peer_status(p: Peer, now: float, current: int, keys: Keyring) -> dict[str, object]:
    session = p.session
    kid = p.conn.channel.key_id if p.conn is not None else None
    replication = None
    if session is not None:
        replication = {
            "state": session.state.value,
            "in_sync": session.in_sync,
            "pending": len(session.pending),
            "in_flight_bytes": p.flow.in_flight,
            "acked_version": version_json(session.acked),
            "lag_ms": round(p.lag.lag(now) * 1000, 3),
            "lag_records": writes_behind(session.acked, current),
        }
    return {
        "node": p.name,
        "address": p.address,
        "link": "up" if p.conn is not None and p.up else "down",
        "role": p.role.name.lower() if p.role is not None and p.up else None,
        "in_sync": bool(p.up and (p.in_sync_flag or p.role is Role.PRIMARY)),
        "last_seen_ms": round((now - p.last_rx) * 1000) if p.last_rx else None,
        "rtt_ms": round(p.rtt * 1000, 3) if p.rtt is not None else None,
        # Which key the link is under: its key id, and "current"/"next" of this node's keys.
        "key_id": kid.hex() if kid is not None else None,
        "key": keys.name_of(kid),
        "replication": replication,
    }
