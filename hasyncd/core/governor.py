"""The rekey governor: SAs that must be rekeyed, released to the IKE daemon at a pace.

After a promotion, every non-ESN SA whose counter would wrap reads
``rekey_required``, and every IKE SA needs RFC 6311 message-ID sync.  Handing
50,000 of them to the IKE daemon at once starts a rekey storm (pfSense users
saw WatchGuard clusters flood rekeys after failover; NetApp warns that
renegotiating everything at takeover "can overwhelm the system").  The
governor queues them and releases them with a token bucket: ``rate`` per
second on average, in ticks of about ``TICK_S`` spread by ``jitter`` (a
fraction of a tick, drawn from the generator passed in), never more than
``BURST_TICKS`` ticks' worth at once.

Sans-IO: the core passes ``now`` and arms its timer at ``deadline()``.
"""

from __future__ import annotations

import random
from collections import deque

TICK_S = 0.1  # seconds between releases: 20 per tick at the default 200/s
BURST_TICKS = 2  # tokens never exceed two ticks' worth (a late tick catches up once)
# Releases remembered for GET /v1/rekey: the IKE daemon normally follows the
# rekey_release events; this lets it catch up after a reconnect.
MAX_RECENT = 10_000

Item = tuple[str, str]  # (kind, id)


class RekeyGovernor:
    def __init__(self, rate: float, jitter: float, rng: random.Random) -> None:
        self.rate, self.jitter, self.rng = rate, jitter, rng
        self.queue: deque[Item] = deque()
        self.recent: deque[tuple[str, str, float]] = deque(maxlen=MAX_RECENT)  # kind, id, wall
        self.released = 0
        self._queued: set[Item] = set()
        self._tokens = 0.0
        self._last = 0.0
        self._next: float | None = None

    def add(self, items: list[Item], now: float) -> None:
        fresh = [i for i in items if i not in self._queued]
        if not fresh:
            return
        if not self.queue:
            self._last = now
            self._tokens = 1.0  # the first one goes at once
            self._next = now
        self.queue.extend(fresh)
        self._queued.update(fresh)

    def clear(self) -> None:
        """A step-down: the next primary decides what to release."""
        self.queue.clear()
        self._queued.clear()
        self._next = None

    def deadline(self) -> float | None:
        return self._next if self.queue else None

    def run(self, now: float, wall: float) -> list[Item]:
        """Release what the bucket allows at ``now``; empty until the next deadline."""
        if not self.queue or self._next is None or now < self._next:
            return []
        cap = max(1.0, self.rate * TICK_S * BURST_TICKS)
        self._tokens = min(cap, self._tokens + self.rate * (now - self._last))
        self._last = now
        n = min(int(self._tokens), len(self.queue))
        self._tokens -= n
        out = [self.queue.popleft() for _ in range(n)]
        for item in out:
            self._queued.discard(item)
            self.recent.append((item[0], item[1], wall))
        self.released += n
        spread = 1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)
        self._next = now + max(TICK_S * spread, 1.0 / self.rate if n == 0 else 0.0)
        return out

    def status(self) -> dict[str, object]:
        return {"rate": self.rate, "pending": len(self.queue), "released": self.released}
