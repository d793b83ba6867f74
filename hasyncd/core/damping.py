"""Flap damping: too many unplanned role changes in a window suspend automatic promotion.

Palo Alto suspends a firewall after 3 flaps in 15 minutes; hasyncd does the
same per node with ``node.max_flaps`` and a 15-minute window.  A suspended
node keeps its current role but is never elected or handed the role; it
resumes by itself once the window holds no more than ``max_flaps`` changes.
"""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger("hasyncd.roles")


class FlapDamper:
    def __init__(self, max_flaps: int, window: float) -> None:
        self.max_flaps = max_flaps
        self.window = window
        self.changes: deque[float] = deque()
        self.suspended_since: float | None = None

    def note(self, now: float) -> bool:
        """Record a role change; True if it just suspended automatic promotion."""
        self.changes.append(now)
        self.expire(now)
        if len(self.changes) > self.max_flaps and self.suspended_since is None:
            self.suspended_since = now
            log.error(
                "SUSPENDED automatic promotion: %d role changes within %g s (node.max_flaps = %d)",
                len(self.changes),
                self.window,
                self.max_flaps,
            )
            return True
        return False

    def expire(self, now: float) -> None:
        while self.changes and now - self.changes[0] > self.window:
            self.changes.popleft()
        if self.suspended_since is not None and len(self.changes) <= self.max_flaps:
            self.suspended_since = None
            log.warning("automatic promotion resumed: role changes back under node.max_flaps")

    def deadline(self) -> float | None:
        return self.changes[0] + self.window if self.changes else None

    def status(self, now: float) -> dict[str, object] | None:
        if self.suspended_since is None:
            return None
        return {
            "since_s": round(now - self.suspended_since, 3),
            "role_changes": len(self.changes),
            "window_s": self.window,
        }
