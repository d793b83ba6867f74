"""A secondary's side of replication: merge (if it was primary), request, snapshot, stream.

    MERGING ─► NEED_REQUEST ─► REQUESTED ─► BULK ─► STREAM
        (former primaries only)        BULK_START   BULK_END

A new link to the primary restarts the sequence, but the request names what
this node still holds (a ``Claim``): the primary may resume the cut snapshot
or stream only what changed (``hasyncd.core.backlog``); a BULK_START with the
claimed ``snap_id`` says it does.  A snapshot cut short keeps its resync (the
entries it must still deliver or purge) for that.  Only BULK_END makes the
node ``in_sync``.  Every record is validated before it is stored
(``hasyncd.core.apply.apply_changes``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from hasyncd.core.merge import MergeSender
from hasyncd.core.peers import Peer
from hasyncd.core.replication import REPLICATED_KIND_CODES, Mark, Position
from hasyncd.errors import UnexpectedMessage
from hasyncd.store import Store, pack_version
from hasyncd.wire.messages import BulkEnd, BulkStart, Change, Message, Phase, Records, SyncRequest

log = logging.getLogger("hasyncd.roles")

# Resume requests in a row whose link ended before any BULK_START answered
# them, after which the follower asks for a snapshot instead: a primary of a
# release without resumption closes the link on the resume form (malformed),
# and a link that keeps failing this early is not helped by resuming.
RESUME_ATTEMPTS = 3


class FollowerRoles(Protocol):
    """The role state a follower reads and advances (``hasyncd.core.roles.RoleManager``)."""

    epoch: int
    applied: int  # newest version applied from a primary
    resume_claim: Claim | None
    resume_failures: int

    def set_in_sync(self, value: bool) -> None: ...


class ReplicaLink(Protocol):
    """What a follower needs of the node: the store, applying changes, sending to the primary."""

    store: Store

    def apply_from_primary(self, changes: tuple[Change, ...]) -> int: ...

    def request_pump(self) -> None: ...

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None: ...

    def send_tracked(self, peer: Peer, msg: Message, mark: Mark | None) -> bool: ...


class FollowState(Enum):
    NEED_REQUEST = "need_request"
    MERGING = "merging"
    REQUESTED = "requested"
    BULK = "bulk"
    STREAM = "stream"


class FollowInput(Enum):
    """What moves a follower: messages from its primary, its own sends, the link."""

    BULK_START = "BULK_START"
    BULK_RECORDS = "bulk RECORDS"
    BULK_END = "BULK_END"
    STREAM_RECORDS = "stream RECORDS"
    REQUEST_SENT = "SYNC_REQUEST sent"
    NO_ANSWER = "no answer to SYNC_REQUEST"
    MERGE_ACKED = "merge acknowledged"
    LINK_RESET = "link up or down"
    LINK_RESET_MERGE_DUE = "link up or down, a merge offer due"


_S, _I = FollowState, FollowInput

# (state, input) -> new state, as h2's H2ConnectionStateMachine._transitions.
# A message input missing here is out of order: UnexpectedMessage closes the
# link.  A BULK_START is taken in any state (the primary may resume or start
# a snapshot whenever it answers); a link going up or down resets any state,
# to MERGING while a merge offer is still due.
TRANSITIONS: dict[tuple[FollowState, FollowInput], FollowState] = {
    **{(s, _I.BULK_START): _S.BULK for s in FollowState},
    (_S.BULK, _I.BULK_RECORDS): _S.BULK,
    (_S.BULK, _I.BULK_END): _S.STREAM,
    (_S.STREAM, _I.STREAM_RECORDS): _S.STREAM,
    (_S.NEED_REQUEST, _I.REQUEST_SENT): _S.REQUESTED,
    (_S.REQUESTED, _I.NO_ANSWER): _S.NEED_REQUEST,
    (_S.MERGING, _I.MERGE_ACKED): _S.NEED_REQUEST,
    **{(s, _I.LINK_RESET): _S.NEED_REQUEST for s in FollowState},
    **{(s, _I.LINK_RESET_MERGE_DUE): _S.MERGING for s in FollowState},
}


@dataclass(frozen=True, slots=True)
class Claim:
    """What this node holds of session ``snap_id`` of the primary in ``epoch``.

    ``kind`` 0: the whole snapshot (it processed BULK_END) and part of the
    stream; otherwise the snapshot up to record ``after`` of ``kind`` (None:
    nothing of that kind yet), with its resync still open.
    """

    epoch: int
    snap_id: int
    kind: int = 0
    after: str | None = None


@dataclass
class Follower:
    primary: str
    state: FollowState = FollowState.NEED_REQUEST
    merge: MergeSender | None = None
    snap_id: int = -1
    received: int = 0
    requested_at: float = 0.0
    merge_resume: Position | None = None  # the merge walk position the primary acknowledged
    asked: Claim | None = None  # the claim of the last SYNC_REQUEST sent

    def process_input(self, inp: FollowInput) -> None:
        """Take one transition of ``TRANSITIONS``; an input with none is out of order."""
        new = TRANSITIONS.get((self.state, inp))
        if new is None:
            raise UnexpectedMessage(f"{inp.value} in state {self.state.value}")
        self.state = new

    def _link_reset(self) -> None:
        due = self.merge is not None
        self.process_input(_I.LINK_RESET_MERGE_DUE if due else _I.LINK_RESET)

    @property
    def streaming(self) -> bool:
        return self.state is FollowState.STREAM

    def has_work(self, peer: Peer) -> bool:
        """Something can be sent right now (the pump should run again at once).

        A merge waiting for the primary's acknowledgements (window full) has
        nothing to do until one arrives: the ACK's input runs the pump.
        """
        if self.state is FollowState.NEED_REQUEST:
            return True
        return (
            self.state is FollowState.MERGING
            and self.merge is not None
            and not self.merge.finished
            and peer.flow.open
        )

    def handle(
        self,
        roles: FollowerRoles,
        link: ReplicaLink,
        peer: Peer,
        msg: BulkStart | Records | BulkEnd,
    ) -> None:
        """Apply a replication message from the primary we follow (already checked to be it)."""
        store = link.store
        if isinstance(msg, BulkStart):
            asked = self.asked
            roles.resume_failures = 0
            if asked is not None and msg.snap_id == asked.snap_id:
                if asked.kind and not store.resyncing:
                    raise UnexpectedMessage("BULK_START resumes a snapshot this node abandoned")
                what = "snapshot" if asked.kind else "stream"
                log.info("%s resumes the %s of snapshot %d", peer.name, what, msg.snap_id)
            else:
                if store.resyncing:
                    store.abort_resync()
                store.begin_resync()
                self.received = 0
                roles.resume_claim = Claim(roles.epoch, msg.snap_id, REPLICATED_KIND_CODES[0])
                log.info(
                    "snapshot %d from %s started (%d records)", msg.snap_id, peer.name, msg.records
                )
            self.process_input(FollowInput.BULK_START)
            self.snap_id = msg.snap_id
            roles.set_in_sync(False)
        elif isinstance(msg, BulkEnd):
            if msg.snap_id != self.snap_id and self.state is FollowState.BULK:
                raise UnexpectedMessage(f"BULK_END in state {self.state.value}")  # another's end
            self.process_input(FollowInput.BULK_END)
            purged = store.end_resync()
            roles.applied = max(roles.applied, pack_version(msg.epoch, msg.seq))
            roles.resume_claim = Claim(roles.epoch, msg.snap_id)
            log.info(
                "in sync with %s: snapshot %d delivered %d records, %d stale purged",
                peer.name,
                msg.snap_id,
                self.received,
                purged,
            )
            roles.set_in_sync(True)
        elif msg.phase is Phase.BULK:
            self.process_input(FollowInput.BULK_RECORDS)
            link.apply_from_primary(msg.changes)
            self.received += len(msg.changes)
            if msg.changes:  # the walk's order: the last change is where it stands
                last = msg.changes[-1]
                roles.resume_claim = Claim(roles.epoch, self.snap_id, last.kind, last.id)
        else:
            self.process_input(FollowInput.STREAM_RECORDS)
            roles.applied = max(roles.applied, link.apply_from_primary(msg.changes))

    def pump(
        self,
        roles: FollowerRoles,
        core: ReplicaLink,
        peer: Peer,
        now: float,
        handshake_timeout: float,
    ) -> None:
        if self.state is FollowState.MERGING and self.merge is not None:
            while peer.flow.open:
                nxt = self.merge.next_message(core.store)
                if nxt is None:
                    if not self.merge.finished:
                        core.request_pump()
                    break
                core.send_tracked(peer, nxt[0], nxt[1])
        elif self.state is FollowState.NEED_REQUEST:
            claim = roles.resume_claim
            if claim is not None and (
                claim.epoch != roles.epoch or (claim.kind and not core.store.resyncing)
            ):
                claim = roles.resume_claim = None  # another primary, or the resync was abandoned
            req = (
                SyncRequest("follow")
                if claim is None
                else SyncRequest("resume", claim.epoch, claim.snap_id, claim.kind, claim.after)
            )
            if core.send(peer, req) is not None:
                self.process_input(FollowInput.REQUEST_SENT)
                self.requested_at, self.asked = now, claim
        elif (
            self.state is FollowState.REQUESTED and now - self.requested_at > 2 * handshake_timeout
        ):
            self.process_input(FollowInput.NO_ANSWER)  # the primary did not answer: ask again

    def link_up(self) -> None:
        """A new link to the primary: start over (merge again if one was due).

        A snapshot in progress keeps its resync: the primary may resume it.
        """
        if self.merge is not None:
            self.merge = MergeSender(self.merge.epoch, self.merge.floor, self.merge_resume)
        self._link_reset()

    def link_down(self, roles: FollowerRoles) -> None:
        if self.state is FollowState.REQUESTED and self.asked is not None:
            roles.resume_failures += 1
            if roles.resume_failures >= RESUME_ATTEMPTS:
                log.warning(
                    "%d resume requests in a row got no answer before the link ended: "
                    "asking for a snapshot next",
                    roles.resume_failures,
                )
                roles.resume_claim, roles.resume_failures = None, 0
        if self.state is FollowState.BULK:
            roles.set_in_sync(False)  # the resync stays open: the primary may resume it
        self._link_reset()

    def merge_acknowledged(self, peer: Peer) -> bool:
        """The primary acknowledged the whole merge; False if none was in progress."""
        if self.state is not FollowState.MERGING:
            return False
        offered = self.merge.sent if self.merge else 0
        log.warning("merge into %s acknowledged (%d records offered)", peer.name, offered)
        self.merge = None
        self.process_input(FollowInput.MERGE_ACKED)
        return True
