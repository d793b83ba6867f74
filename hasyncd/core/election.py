"""The election: a pure function from the reachable members to a winner and a reason.

Order (each stage keeps only the best candidates; the first stage that leaves
one candidate names the reason):

1. eligibility: suspended (flap damping) and fenced nodes never win;
2. monitored interfaces: fewer interfaces down is better (link failover);
3. data: a node holding a complete copy (in sync) beats one that does not,
   so a failover never promotes a half-synchronized node when a complete one
   is reachable (pfsync/sasyncd learned this the hard way); in a failover
   (``prefer_newest``) the newest copy wins among complete ones, because a
   secondary that lost its link to the primary still believes it is complete
   while another one went on acknowledging writes;
4. incumbency: without ``override`` the current primary keeps its role
   (no preemption; a returning node does not take the role back);
5. uptime (differences under ``uptime_margin_s`` are ignored) then priority,
   or with ``override`` priority then uptime;
6. name: the highest name wins, so equal priorities still give one answer.

Uptime grouping keeps every candidate within the margin of the longest-lived
one, which keeps the order transitive and the result independent of the
order candidates are listed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    priority: int
    uptime_s: float
    monitors_down: int = 0
    in_sync: bool = True
    eligible: bool = True
    version: int = 0  # newest version it holds (epoch << 64 | seq)


@dataclass(frozen=True, slots=True)
class Rules:
    override: bool = False
    uptime_margin_s: float = 300.0
    prefer_newest: bool = False  # failover: among complete copies, the newest wins


@dataclass(frozen=True, slots=True)
class Decision:
    winner: str | None
    reason: str


def _keep_best(
    pool: list[Candidate], score: Callable[[Candidate], float]
) -> tuple[list[Candidate], float]:
    best = max(score(c) for c in pool)
    return [c for c in pool if score(c) == best], best


def elect(candidates: Sequence[Candidate], rules: Rules, incumbent: str | None = None) -> Decision:
    pool = [c for c in candidates if c.eligible]
    if not pool:
        return Decision(None, "no eligible candidate (all suspended or fenced)")
    if len(pool) == 1:
        return Decision(pool[0].name, "only eligible candidate")

    def stage(label: str, narrowed: list[Candidate]) -> Decision | None:
        nonlocal pool
        runner_ups = [c for c in pool if c not in narrowed]
        pool = narrowed
        if len(pool) == 1:
            other = ", ".join(sorted(c.name for c in runner_ups))
            return Decision(pool[0].name, f"selected by {label} over {other}")
        return None

    narrowed, best = _keep_best(pool, lambda c: -c.monitors_down)
    if d := stage(f"monitored interfaces ({int(-best)} down)", narrowed):
        return d
    narrowed, _ = _keep_best(pool, lambda c: float(c.in_sync))
    if d := stage("holding a complete copy (in sync)", narrowed):
        return d
    if rules.prefer_newest:
        narrowed, _ = _keep_best(pool, lambda c: c.version)
        if d := stage("holding the newest copy", narrowed):
            return d
    if incumbent is not None and not rules.override:
        for c in pool:
            if c.name == incumbent:
                return Decision(c.name, "incumbent primary keeps its role (no preemption)")

    def by_uptime() -> Decision | None:
        longest = max(c.uptime_s for c in pool)
        narrowed = [c for c in pool if longest - c.uptime_s < rules.uptime_margin_s]
        return stage(f"uptime (margin {rules.uptime_margin_s:g} s)", narrowed)

    def by_priority() -> Decision | None:
        narrowed, best = _keep_best(pool, lambda c: c.priority)
        return stage(f"priority {int(best)}", narrowed)

    order = (by_priority, by_uptime) if rules.override else (by_uptime, by_priority)
    for step in order:
        if d := step():
            return d
    winner = max(pool, key=lambda c: c.name)
    others = ", ".join(sorted(c.name for c in pool if c is not winner))
    return Decision(winner.name, f"selected by name (equal on all else) over {others}")
