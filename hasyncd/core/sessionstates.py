"""The states of a primary's replication session to one secondary, as one transition table.

``OutboundSession`` (``hasyncd.core.replication``) moves only by
``TRANSITIONS``: ``(state, input) -> (effect, new state)``, as h2's
``H2ConnectionStateMachine._transitions`` and ``process_input``, and as the
follower's table (``hasyncd.core.follower``) on the other end of the link.

Inputs are the session's own sends (what ``next_message`` built) and the
peer's acknowledgements of them (the ``Mark`` each frame carried).  A session
sends BULK_START once, bulk RECORDS, BULK_END once, then stream RECORDS, and
acknowledgements come in the order the frames were sent; so any pair missing
from the table means the session's bookkeeping is broken.  It is a clear
error (``UnexpectedMessage``: the link is closed and the peer resyncs), never
a silent change of state.
"""

from __future__ import annotations

from enum import Enum

from hasyncd.errors import UnexpectedMessage


class SessionState(Enum):
    BULK_START = "bulk_start"
    BULK = "bulk"
    STREAM = "stream"


class SessionInput(Enum):
    START_SENT = "BULK_START sent"
    BULK_SENT = "bulk RECORDS sent"
    END_SENT = "BULK_END sent"
    STREAM_SENT = "stream RECORDS sent"
    BULK_ACKED = "bulk RECORDS acknowledged"
    END_ACKED = "BULK_END acknowledged"
    STREAM_ACKED = "stream RECORDS acknowledged"


class SessionEffect(Enum):
    NONE = "none"
    FIX_FLOOR = "fix the floor"  # the peer holds every write up to BULK_END's watermark
    COUNT_BULK = "count the snapshot records acknowledged"
    ADVANCE = "advance the acknowledged watermark"
    IN_SYNC = "advance the watermark; the peer is in sync"


_S, _I, _E = SessionState, SessionInput, SessionEffect

TRANSITIONS: dict[tuple[SessionState, SessionInput], tuple[SessionEffect, SessionState]] = {
    (_S.BULK_START, _I.START_SENT): (_E.NONE, _S.BULK),
    (_S.BULK, _I.BULK_SENT): (_E.NONE, _S.BULK),
    (_S.BULK, _I.END_SENT): (_E.FIX_FLOOR, _S.STREAM),
    (_S.STREAM, _I.STREAM_SENT): (_E.NONE, _S.STREAM),
    # Snapshot records are acknowledged while the bulk goes on, or after its end was sent.
    (_S.BULK, _I.BULK_ACKED): (_E.COUNT_BULK, _S.BULK),
    (_S.STREAM, _I.BULK_ACKED): (_E.COUNT_BULK, _S.STREAM),
    (_S.STREAM, _I.END_ACKED): (_E.IN_SYNC, _S.STREAM),
    (_S.STREAM, _I.STREAM_ACKED): (_E.ADVANCE, _S.STREAM),
}


def transition(state: SessionState, inp: SessionInput) -> tuple[SessionEffect, SessionState]:
    """One step of ``TRANSITIONS``; an input with no entry in ``state`` is an error."""
    step = TRANSITIONS.get((state, inp))
    if step is None:
        raise UnexpectedMessage(f"replication session: {inp.value} in state {state.value}")
    return step
