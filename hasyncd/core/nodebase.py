"""The node core's state, and the small views every part of it reads.

``NodeCore`` (``hasyncd.core.node``) is assembled from parts, each a layer
over this one: the write path (``hasyncd.core.writes``), replication
streams (``hasyncd.core.streams``), links and liveness
(``hasyncd.core.connections``), and the node itself (input dispatch and
effect application).  This layer holds the state they share; the roles
(``hasyncd.core.roles``) are built on top, by the node.
"""

from __future__ import annotations

import random

from hasyncd.core.backlog import Backlog
from hasyncd.core.freshness import Freshness
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.links import MAX_HANDSHAKING, MAX_UNPROVEN, Dialer, HandshakeBudget
from hasyncd.core.outputs import Outputs
from hasyncd.core.peers import Conn, Peer
from hasyncd.core.roles import RoleManager
from hasyncd.core.seqview import History
from hasyncd.core.settings import CoreSettings
from hasyncd.core.splitbrain import SplitBrainState
from hasyncd.store import Store


class NodeParts(Outputs):
    """The state of one node core; ``NodeCore`` adds the roles and the handler table."""

    roles: RoleManager

    def __init__(
        self,
        settings: CoreSettings,
        store: Store,
        *,
        now: float,
        wall: float,
        boot_id: bytes,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(now)
        self.s = settings
        self.store = store
        # Both clocks are inputs: every input call passes ``now`` (monotonic,
        # counting suspend) and ``wall`` (Unix time); the core reads no clock.
        self.wall = wall
        self.boot_id = boot_id
        self.rng = rng or random.Random()  # noqa: S311 - reconnect jitter, not crypto
        self.started = now
        self.conns: dict[int, Conn] = {}
        self.peers: dict[str, Peer] = {}
        self.dialer = Dialer(settings, self.rng)
        # Inbound handshakes: before a valid INIT, and after it until confirmed.
        self.unproven = HandshakeBudget(MAX_UNPROVEN)
        self.proven = HandshakeBudget(MAX_HANDSHAKING)
        self.record_events = False
        self.watermark: int | None = None
        self._in_sync_told = False  # the in_sync the last SyncChanged said (none: False)
        self._next_hb = now
        self._last_hb_sent = now
        self._next_sweep = now + 1.0
        self._pump_needed = False
        self._snap_ids = 0
        self.backlog = Backlog(settings.backlog_bytes, settings.backlog_s)
        self.promotions = History(store)  # read-time ESP sequence numbers (seqview)
        self.governor = RekeyGovernor(settings.rekey_rate, settings.rekey_jitter, self.rng)
        self.freshness = Freshness()  # how stale the replicated SA counters are
        self.split_brain = SplitBrainState()  # two primaries overlapped (status)

    @property
    def version(self) -> int:
        """Primary: the newest version it assigned; secondary: the newest it applied."""
        return self.roles.version

    def _clock(self, now: float, wall: float) -> None:
        """The two clocks of the input being handled, for everything it calls."""
        self.now = now
        self.wall = wall

    def now_ms(self, now: float) -> int:
        return int((now - self.started) * 1000)

    def peer_by_tag(self, tag: int) -> Peer | None:
        for p in self.peers.values():
            if p.tag == tag:
                return p
        return None

    def apply_effects(self) -> None:
        """Apply what the sub-machines queued (``NodeCore.apply_effects``)."""
        raise NotImplementedError
