"""Helpers for tests that drive node cores in the deterministic simulator."""

from __future__ import annotations

from typing import Any

from hasyncd import samples
from hasyncd.core.seqview import view
from hasyncd.records import KINDS
from hasyncd.sim import WALL_BASE, Sim
from hasyncd.store import Entry
from hasyncd.wire.messages import Role

SA = KINDS["ipsec_sa"].code
IKE = KINDS["ike_sa"].code
WEB = KINDS["sslvpn_web_session"].code
NOW = WALL_BASE  # records are created "now" on the simulated wall clock

_GEN = {
    SA: lambda i: samples.ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", NOW),
    IKE: lambda i: samples.ike_sa(i, NOW),
    WEB: lambda i: samples.web_session(i, NOW),
}
_KIND_BY_CODE = {k.code: k for k in KINDS.values()}


def sample(kind: int, i: int) -> dict[str, Any]:
    """Sample record ``i`` of ``kind`` in its API JSON form."""
    return _GEN[kind](i)[1]


def record(kind: int, i: int, **changes: Any) -> tuple[str, bytes, float | None]:
    """Sample record ``i`` of ``kind`` as (id, blob, expiry), with fields changed."""
    rid, rec = _GEN[kind](i)
    rec.update(changes)
    r = _KIND_BY_CODE[kind].from_json(rec, rid)
    return rid, r.blob, r.expires


def put(sim: Sim, node: str, kind: int, i: int, **changes: Any) -> tuple[str, int]:
    rid, blob, _expires = record(kind, i, **changes)
    version = sim.write(node, kind, rid, blob)
    assert version is not None
    return rid, version


def decoded(entry: Entry | None, kind: int) -> dict[str, Any] | None:
    if entry is None or entry.blob is None:
        return None
    k = _KIND_BY_CODE[kind]
    return k.to_json(k.decode(entry.blob))


def viewed(sim: Sim, node: str, kind: int, rid: str) -> dict[str, Any] | None:
    """A record as node ``node``'s API shows it: through its promotion history."""
    core = sim.nodes[node].core
    entry = core.store.get_raw(kind, rid)
    if entry is None or entry.blob is None:
        return None
    k = _KIND_BY_CODE[kind]
    return k.to_json(view(core.promotions, kind, rid, entry.version, k.decode(entry.blob)))


def snapshot(sim: Sim, node: str) -> dict[tuple[int, str], tuple[int, bytes | None]]:
    """Everything a node stores (live records only) as {(kind, id): (version, blob)}."""
    store = sim.nodes[node].core.store
    wall = WALL_BASE + sim.now
    out = {}
    for kind in (SA, IKE, WEB):
        for rid, entry in store.items(kind):
            if entry.live(wall):
                out[(kind, rid)] = (entry.version, entry.blob)
    return out


def pair(sim: Sim, **kw: Any) -> tuple[str, str]:
    """A two-node cluster a (priority 200) and b (100), settled; returns (primary, secondary)."""
    sim.add("a", ["a", "b"], priority=200, **kw)
    sim.add("b", ["a", "b"], priority=100, **kw)
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=10)
    return "a", "b"


def in_sync(sim: Sim, node: str) -> bool:
    n = sim.nodes[node]
    return n.alive and n.core.roles.in_sync and n.core.roles.primary is not None


def role(sim: Sim, name: str) -> Role:
    return sim.nodes[name].role


def settled(sim: Sim, names: list[str]) -> bool:
    """One primary, every other named node in sync with it."""
    primaries = sim.primaries()
    return len(primaries) == 1 and all(in_sync(sim, n) for n in names if n != primaries[0])
