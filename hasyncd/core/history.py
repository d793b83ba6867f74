"""What an operator asks after the fact: the recent role changes, and how far behind each peer is.

``RoleHistory`` keeps the last ROLE_HISTORY role changes of this node (wall
time, old and new role, epoch, reason): ``GET /v1/history``, ``hasyncd
history`` and the summary in ``hasyncd status``.

``LagClock`` answers "how long has the oldest write a secondary has not
acknowledged been waiting?" without a timestamp per write: the primary
samples (version, time) at most every LAG_RESOLUTION seconds of writes, and
drops samples as acknowledgements pass them.  The lag is exact to within
that resolution; with more than LAG_SAMPLES samples outstanding the oldest
are dropped, and the lag reads low by at most the span they covered (a
secondary that far behind is reported by its record count too).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

ROLE_HISTORY = 64  # role changes kept: weeks of normal operation, a day of flapping
LAG_RESOLUTION = 0.005  # seconds between two lag samples: finer than any lag an operator acts on
LAG_SAMPLES = 4096  # samples per peer: 20 s of continuous writes at that resolution


@dataclass(frozen=True, slots=True)
class RoleChange:
    time: float  # wall clock
    old: str
    new: str
    epoch: int
    primary: str | None
    reason: str


class RoleHistory:
    def __init__(self) -> None:
        self._changes: deque[RoleChange] = deque(maxlen=ROLE_HISTORY)

    def add(self, change: RoleChange) -> None:
        self._changes.append(change)

    def recent(self, n: int = ROLE_HISTORY) -> list[dict[str, object]]:
        """Newest first."""
        return [asdict(c) for c in list(self._changes)[::-1][:n]]


class LagClock:
    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=LAG_SAMPLES)

    def wrote(self, version: int, now: float) -> None:
        if not self._samples or now - self._samples[-1][1] >= LAG_RESOLUTION:
            self._samples.append((version, now))

    def acked(self, version: int) -> None:
        samples = self._samples
        while samples and samples[0][0] <= version:
            samples.popleft()

    def lag(self, now: float) -> float:
        """Seconds the oldest unacknowledged sampled write has been waiting (0 when none)."""
        return now - self._samples[0][1] if self._samples else 0.0
