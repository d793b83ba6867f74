"""A planned stop: hand over first, wait (bounded) for a running snapshot, say what is lost.

A primary told to stop (SIGTERM, ``systemctl stop``) must not leave the
cluster holding less than it does:

* an in-sync secondary exists: hand the role over (the ordinary lossless
  handover; the target acknowledged every write before it takes over);
* a secondary is still loading its snapshot: keep serving as primary until
  it is in sync, at most until ``deadline``, then hand over;
* otherwise (no secondary, the deadline passed, the handover failed): stop
  anyway, but first log, and show in status, how many records no other node
  has acknowledged: those exist only on this node and are lost with it.

A secondary is ready to stop at once.  The node core emits ``StopReady``
exactly once; the shell waits for it (bounded) before it closes the links.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hasyncd.core.peers import Peer
from hasyncd.core.replication import unacknowledged


@dataclass
class StopState:
    since: float
    deadline: float  # how long a running snapshot may still be waited for
    handover_tried: bool = False
    ready: bool = False
    handed_to: str | None = None
    unreplicated: int = 0  # records no other node has acknowledged (an upper bound)
    waiting_for: str | None = None

    def status(self, now: float) -> dict[str, object]:
        return {
            "since_s": round(now - self.since, 3),
            "ready": self.ready,
            "waiting_for": self.waiting_for,
            "wait_left_s": round(max(0.0, self.deadline - now), 3),
            "handed_to": self.handed_to,
            "unreplicated_records": self.unreplicated,
        }


def loading_peers(peers: Iterable[Peer]) -> list[Peer]:
    """Linked secondaries receiving a snapshot from us right now."""
    return [
        p
        for p in peers
        if p.up and p.conn is not None and p.session is not None and not p.session.in_sync
    ]


def least_unreplicated(peers: Iterable[Peer], live: int, version: int) -> tuple[int, Peer | None]:
    """How many records the best-placed linked secondary lacks at most, and which one it is.

    With no linked secondary, every live record exists only on this node.
    """
    best: tuple[int, Peer | None] = (live, None)
    for p in peers:
        if p.up and p.conn is not None and p.session is not None:
            n = unacknowledged(p.session, live, version)
            if n < best[0] or best[1] is None:
                best = (min(n, live), p)
    return best
