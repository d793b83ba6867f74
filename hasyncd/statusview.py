"""What ``hasyncd status``, ``history`` and ``records`` print: API documents rendered for people.

Pure functions from the API's JSON to text, in the manner of ``get sys ha
status`` and ``crm_mon``: the role and why, every peer on one line (link,
RTT, sync, lag), records, the fencing/suspension/split-brain/stop state,
then the last role changes.  Key material in records is hidden unless asked
for (``--show-keys``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

HIDDEN = "<hidden: --show-keys>"


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _ms(v: Any) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v / 1000:.1f} s"
    return f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


def _peer_row(p: dict[str, Any]) -> list[str]:
    rep = p.get("replication") or {}
    if rep:
        lag = f"{_ms(rep.get('lag_ms'))} / {rep.get('lag_records', 0)} rec"
        sync = "yes" if rep.get("in_sync") else f"no ({rep.get('state', '?')})"
    else:
        lag = "-"
        sync = "yes" if p.get("in_sync") else "no"
    return [
        str(p.get("node") or "?"),
        str(p.get("address", "")),
        str(p.get("link", "")),
        str(p.get("role") or "-"),
        sync,
        _ms(p.get("rtt_ms")),
        lag,
        _ms(p.get("last_seen_ms")),
        _key(p),
    ]


def _key(p: dict[str, Any]) -> str:
    kid = p.get("key_id")
    return f"{kid} ({p.get('key') or 'retired'})" if kid else "-"


def _keys_line(st: dict[str, Any]) -> list[str]:
    keys = st.get("link_keys")
    if not keys:
        return []
    nxt = keys.get("next")
    return [f"  link keys: current {keys.get('current')}" + (f", next {nxt}" if nxt else "")]


def _api_line(st: dict[str, Any]) -> list[str]:
    """Each API listener's own budget: open/cap, and how many were refused past it."""
    budgets = st.get("api_connections")
    if not budgets:
        return []
    parts = [f"{n} {b['open']}/{b['cap']} ({b['refused']} refused)" for n, b in budgets.items()]
    return ["  api connections: " + ", ".join(parts)]


def _state_lines(st: dict[str, Any]) -> list[str]:
    out = []
    fenced = st.get("fenced")
    out.append(f"  fenced: {'yes: ' + fenced['reason'] if fenced else 'no'}")
    sus = st.get("suspended")
    if sus:
        out.append(
            f"  SUSPENDED: automatic promotion off ({sus['role_changes']} unplanned role "
            f"changes in {sus['window_s']:g} s)"
        )
    else:
        out.append(f"  suspended: no ({st.get('role_changes_in_window', 0)} flaps in window)")
    sb = st.get("split_brain")
    out.append(f"  split brain: {_split(sb) if sb else 'none'}")
    if st.get("handover"):
        h = st["handover"]
        out.append(f"  handing over to {h['target']}: {h['reason']}")
    stop = st.get("stopping")
    if stop:
        state = "ready" if stop["ready"] else f"waiting for {stop['waiting_for']}"
        out.append(
            f"  STOPPING: {state}; records only on this node: {stop['unreplicated_records']}"
        )
    return out


def _split(sb: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sb.items() if k in ("peer", "survivor", "merged", "conflicts")]
    return ", ".join(parts) or "yes"


def render_status(st: dict[str, Any]) -> str:
    role = str(st.get("role", "?")).upper()
    lines = [f"hasyncd {st.get('node')}: {role} in epoch {st.get('epoch')}"]
    lines.append(f"  why: {st.get('role_reason', '')}")
    if st.get("primary") and st.get("role") != "primary":
        sync = st.get("sync") or {}
        detail = f", {sync['state']}" if sync else ""
        in_sync = "in sync" if st.get("in_sync") else "NOT in sync"
        lines.append(f"  primary: {st['primary']} ({in_sync}{detail})")
    records = st.get("records") or {}
    total = sum(int(n) for n in records.values())
    per = ", ".join(f"{k} {n}" for k, n in records.items())
    v = st.get("version") or {}
    lines.append(f"  records: {total} ({per}); version {v.get('epoch')}.{v.get('seq')}")
    bl = st.get("backlog")
    if bl:
        cover = bl["covers_after"]
        lines.append(
            f"  backlog: {bl['entries']} writes, {bl['bytes'] / 2**20:.1f} of "
            f"{bl['max_bytes'] / 2**20:.0f} MiB; resumable after {cover['epoch']}.{cover['seq']}"
            f" (oldest {bl['oldest_age_s'] if bl['oldest_age_s'] is not None else '-'} s"
            f" of {bl['max_age_s']:g} s)"
        )
    if st.get("sync_mode"):
        lines.append(f"  sync mode: {st['sync_mode']}")
    lines += _state_lines(st)
    lines += _keys_line(st)
    lines += _api_line(st)
    peers = st.get("peers") or []
    lines.append("peers:")
    if peers:
        head = ["NODE", "ADDRESS", "LINK", "ROLE", "IN SYNC", "RTT", "LAG", "LAST SEEN", "KEY"]
        lines += _table([head] + [_peer_row(p) for p in peers])
    else:
        lines.append("  (none configured)")
    history = st.get("role_history") or []
    if history:
        lines.append("last role changes:")
        lines += [f"  {change_line(h)}" for h in history]
    return "\n".join(lines)


def change_line(h: dict[str, Any]) -> str:
    return f"{_when(float(h['time']))}  {h['old']} -> {h['new']}  epoch {h['epoch']}  {h['reason']}"


def render_history(doc: dict[str, Any]) -> str:
    changes = doc.get("history") or []
    if not changes:
        return f"{doc.get('node')}: no role changes yet"
    return "\n".join(
        [f"{doc.get('node')}: role changes, newest first"] + [change_line(h) for h in changes]
    )


def hide_keys(value: Any, *, under_keys: bool = False) -> Any:
    """A record with its key material replaced (``key`` fields, everything under ``keys``)."""
    if isinstance(value, dict):
        return {
            k: HIDDEN
            if (under_keys or k == "key") and not isinstance(v, dict | list)
            else hide_keys(v, under_keys=under_keys or k == "keys")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hide_keys(v, under_keys=under_keys) for v in value]
    return value
