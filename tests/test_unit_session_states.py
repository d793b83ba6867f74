"""The replication session's transition table (``hasyncd.core.sessionstates``, issue 9).

A primary's session to one secondary moves only by ``TRANSITIONS``: these
tests walk a real ``OutboundSession`` over a small store through every state,
and check that every pair the table lacks is a clear error, not a silent move.
"""

from __future__ import annotations

import pytest

from hasyncd.core.replication import Mark, MarkKind, OutboundSession
from hasyncd.core.sessionstates import (
    TRANSITIONS,
    SessionEffect,
    SessionInput,
    SessionState,
    transition,
)
from hasyncd.errors import UnexpectedMessage
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import Entry, Store, pack_version
from hasyncd.wire.messages import BulkEnd, BulkStart, Phase, Records

from .simutil import WEB, record


def store_of(n: int) -> tuple[Store, int]:
    store = Store()
    for i in range(n):
        rid, blob, _ = record(WEB, i)
        KINDS_BY_CODE[WEB].validate_blob(blob, rid)
        store.put(WEB, rid, Entry(pack_version(1, i + 1), None, blob))
    return store, pack_version(1, n)


def test_a_session_walks_bulk_start_bulk_then_stream_and_is_in_sync_on_the_end_ack() -> None:
    store, current = store_of(3)
    s = OutboundSession(7, 1, current)
    assert s.state is SessionState.BULK_START
    msg, mark = s.next_message(store, current)  # type: ignore[misc]
    assert isinstance(msg, BulkStart) and mark is None
    assert s.state is SessionState.BULK
    msg, bulk_mark = s.next_message(store, current)  # type: ignore[misc]
    assert isinstance(msg, Records) and msg.phase is Phase.BULK and len(msg.changes) == 3
    assert s.state is SessionState.BULK
    msg, end_mark = s.next_message(store, current)  # type: ignore[misc]
    assert isinstance(msg, BulkEnd) and end_mark.kind is MarkKind.BULK_END
    assert s.state is SessionState.STREAM and s.floor == current  # FIX_FLOOR
    assert s.next_message(store, current) is None  # nothing queued yet
    assert s.acknowledged(bulk_mark) is False and s.bulk_acked == 3 and not s.in_sync
    assert s.acknowledged(end_mark) is True and s.in_sync and s.acked == current
    s.enqueue(WEB, next(iter(store.tables[WEB].entries)), current + 1)
    msg, wm = s.next_message(store, current + 1)  # type: ignore[misc]
    assert isinstance(msg, Records) and msg.phase is Phase.STREAM
    assert s.acknowledged(wm) is False and s.acked == current + 1  # in sync only once


def test_an_ack_the_session_state_cannot_have_is_an_error_and_changes_nothing() -> None:
    store, current = store_of(1)
    s = OutboundSession(7, 1, current)
    s.next_message(store, current)  # BULK_START sent: now BULK
    with pytest.raises(UnexpectedMessage, match="BULK_END acknowledged in state bulk"):
        s.acknowledged(Mark(MarkKind.BULK_END, current))
    with pytest.raises(UnexpectedMessage, match="stream RECORDS acknowledged in state bulk"):
        s.acknowledged(Mark(MarkKind.WATERMARK, current))
    assert (s.state, s.in_sync, s.acked) == (SessionState.BULK, False, 0)


def test_the_table_takes_each_input_only_in_its_states() -> None:
    legal = {
        SessionInput.START_SENT: {SessionState.BULK_START},
        SessionInput.BULK_SENT: {SessionState.BULK},
        SessionInput.END_SENT: {SessionState.BULK},
        SessionInput.STREAM_SENT: {SessionState.STREAM},
        SessionInput.BULK_ACKED: {SessionState.BULK, SessionState.STREAM},
        SessionInput.END_ACKED: {SessionState.STREAM},
        SessionInput.STREAM_ACKED: {SessionState.STREAM},
    }
    for state in SessionState:
        for inp in SessionInput:
            if state in legal[inp]:
                assert (state, inp) in TRANSITIONS
            else:
                with pytest.raises(UnexpectedMessage):
                    transition(state, inp)
    assert transition(SessionState.BULK, SessionInput.END_SENT) == (
        SessionEffect.FIX_FLOOR,
        SessionState.STREAM,
    )
    assert transition(SessionState.STREAM, SessionInput.END_ACKED)[0] is SessionEffect.IN_SYNC
