"""SIGHUP (``systemctl reload``): what of a new configuration applies live, what needs a restart.

Applied live, without touching the HA link: the node's priority, election
and preemption timers, flap damping, heartbeat and handshake timers, the
monitored interfaces, handover and sync timeouts, the ESP sequence margin,
the hooks, the log level and the link keys (``psk_file``, ``psk_next_file``
and their contents: a key rotation, README "Rotating the link key"; links
stay up, and the core re-keys them).  Everything that identifies the node or
its sockets (name, id, addresses, group, window, API sockets, sync mode)
needs a restart: a reload logs each such change by name and keeps the old
value, so the running node never holds a half-applied identity.

Heartbeat timers must match on every member (a peer declares this node lost
after *its own* interval x threshold): reload them on every node.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hasyncd.config import Config
from hasyncd.wire.handshake import key_id

# (section, key) applied by a reload; every other key needs a restart.
LIVE_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("node", "priority"),
        ("node", "preempt_delay_s"),
        ("node", "uptime_margin_s"),
        ("node", "max_flaps"),
        ("node", "monitor"),
        ("link", "heartbeat_interval_ms"),
        ("link", "heartbeat_lost_threshold"),
        ("link", "hello_holddown_ms"),
        ("link", "handshake_timeout_ms"),
        ("link", "psk_file"),
        ("link", "psk_next_file"),
        ("sync", "sync_timeout_ms"),
        ("promotion", "esp_seq_margin"),
        ("promotion", "handover_timeout_ms"),
        ("promotion", "seq_safety_factor"),
        ("promotion", "inbound_window"),
        ("promotion", "rekey_rate"),
        ("promotion", "rekey_jitter"),
        ("hooks", "on_primary"),
        ("hooks", "on_secondary"),
        ("hooks", "on_fault"),
        ("hooks", "timeout_s"),
        ("store", "tombstone_ttl_s"),
        ("log", "level"),
    }
)
SECTIONS = ("node", "link", "api", "sync", "promotion", "hooks", "store", "replication", "log")


@dataclasses.dataclass(frozen=True)
class Reload:
    config: Config  # the running config with every live change applied
    applied: tuple[str, ...]  # "[section].key: old -> new"
    need_restart: tuple[str, ...]  # "[section].key" changed but kept until a restart


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _key_ids(config: Config) -> str:
    """The link keys by key id (never the keys themselves)."""
    out = f"current {key_id(config.psk.reveal()).hex()}"
    if config.psk_next is not None:
        out += f", next {key_id(config.psk_next.reveal()).hex()}"
    return out


def plan(old: Config, new: Config) -> Reload:
    applied: list[str] = []
    restart: list[str] = []
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        o, n = getattr(old, section), getattr(new, section)
        live: dict[str, Any] = {}
        for f in dataclasses.fields(o):
            ov, nv = getattr(o, f.name), getattr(n, f.name)
            if ov == nv:
                continue
            where = f"[{section}].{f.name}"
            if (section, f.name) in LIVE_KEYS:
                live[f.name] = nv
                applied.append(f"{where}: {_show(ov)} -> {_show(nv)}")
            else:
                restart.append(where)
        sections[section] = dataclasses.replace(o, **live) if live else o
    keys: dict[str, Any] = {}
    if old.psk != new.psk or old.psk_next != new.psk_next:
        keys = {"psk": new.psk, "psk_next": new.psk_next}
        applied.append(f"[link] key ids: {_key_ids(old)} -> {_key_ids(new)}")
    merged = dataclasses.replace(old, **sections, **keys)
    return Reload(merged, tuple(applied), tuple(restart))
