"""Failure detection: when a silent peer counts as lost, and when the silence is our own fault.

A peer is lost after ``lost_timeout`` (interval x threshold) without any
authenticated frame.  Silence this node's own stall explains does not count:
each time the node's timer runs late, the lateness is added to every peer's
``stall`` credit, which pushes that peer's deadline back by as much.  A loss
the credit saved is logged and counted (``loss_suppressed_own_stall``)
instead of triggering a promotion: keepalived's and FGCP's users lost their
primaries to their own busy CPUs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from hasyncd.core.peers import Peer

log = logging.getLogger("hasyncd.core")

# A timer late by less than this is scheduling noise, not a stall.  There is
# no upper bound: the shell's clock (CLOCK_BOOTTIME) never jumps, so any
# lateness, a suspend of hours included, is time this node did not run.
STALL_NOISE = 0.02


def loss_deadline(peer: Peer, lost_timeout: float) -> float:
    # One expression for both the timer and the check, so the timer firing at
    # the deadline always finds it reached (no float rounding livelock).
    return peer.last_rx + lost_timeout + peer.stall


def own_lateness(peers: Iterable[Peer], late: float, heartbeat_interval: float) -> bool:
    """The node's timer ran ``late`` seconds after its deadline: credit the peers.

    True if it was a stall (the caller counts ``loop_stalls`` and lets a
    primary re-check its lease), False if it was scheduling noise.
    """
    if late <= STALL_NOISE:
        return False
    for peer in peers:
        if peer.up:
            peer.stall += late
    if late >= heartbeat_interval:
        log.warning("this node's event loop stalled for %.0f ms", late * 1000)
    return True


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What ``check_peers`` found: peers to declare lost (with why), losses it suppressed."""

    lost: tuple[tuple[Peer, str], ...]
    suppressed: int


def check_peers(peers: Iterable[Peer], lost_timeout: float, now: float) -> Verdicts:
    lost_peers: list[tuple[Peer, str]] = []
    suppressed = 0
    for peer in peers:
        if not peer.up or now < peer.last_rx + lost_timeout:
            continue
        silence = now - peer.last_rx
        if now < loss_deadline(peer, lost_timeout):
            if not peer.suppressed:
                peer.suppressed = True
                suppressed += 1
                log.warning(
                    "%s silent for %.0f ms, but this node itself stalled %.0f ms of that: "
                    "not declaring it lost",
                    peer.name,
                    silence * 1000,
                    peer.stall * 1000,
                )
            continue
        lost_peers.append((peer, f"no authenticated frame for {silence * 1000:.0f} ms"))
    return Verdicts(tuple(lost_peers), suppressed)
