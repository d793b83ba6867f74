"""SIGHUP (``systemctl reload``): what of a new configuration applies live, what needs a restart.

Applied live, without touching the HA link: the node's priority, election
and preemption timers, flap damping, heartbeat and handshake timers, the
monitored interfaces, handover and sync timeouts, the ESP sequence margin,
the hooks and the log level.  Everything that identifies the node or its
sockets (name, id, addresses, key, group, window, API sockets, sync mode)
needs a restart: a reload logs each such change by name and keeps the old
value, so the running node never holds a half-applied identity.

Heartbeat timers must match on every member (a peer declares this node lost
after *its own* interval x threshold): reload them on every node.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hasyncd.config import Config

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
SECTIONS = ("node", "link", "api", "sync", "promotion", "hooks", "store", "log")


@dataclasses.dataclass(frozen=True)
class Reload:
    config: Config  # the running config with every live change applied
    applied: tuple[str, ...]  # "[section].key: old -> new"
    need_restart: tuple[str, ...]  # "[section].key" changed but kept until a restart


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


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
    if old.psk != new.psk:
        restart.append("[link].psk_file (key contents)")
    merged = dataclasses.replace(old, **sections)
    return Reload(merged, tuple(applied), tuple(restart))
