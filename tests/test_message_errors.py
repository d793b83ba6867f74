"""Link message refusals name the message and the field, and never echo the value.

The message schemas are msgspec Structs (``hasyncd.wire.messages``); msgspec's
own errors quote some values (an invalid enum value).  A peer's bytes may be
anything, including key material sent to the wrong place, so no refusal may
repeat them.  (Which inputs are refused is tests/test_wire.py's subject.)
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from hasyncd.errors import MalformedMessage
from hasyncd.wire import messages as m

MARK = "SECRETSECRET"
HB = [2, "gw-a", 100, 1, 0, 1, 5, 6, 7, 8, 9, 3, 4]


def raw(mtype: int, body: Any) -> bytes:
    return struct.pack(">BBQ", 1, mtype, 0) + msgpack.packb(body, use_bin_type=True)


CASES: list[tuple[m.MsgType, list[Any], str, str]] = [
    # (type, body, where the error must point, a value it must not contain)
    (m.MsgType.HELLO, [MARK + " x", bytes(16), 1, 4096, ""], "HELLO: field node:", MARK),
    (m.MsgType.HELLO, ["gw-a", MARK.encode(), 1, 4096, ""], "HELLO: field boot_id:", MARK),
    (m.MsgType.HELLO, ["gw-a", bytes(16), 1, 4096, MARK * 6], "HELLO: field listen:", MARK),
    (m.MsgType.HELLO, ["gw-a", bytes(16), 987654, 4096, ""], "HELLO: field tag:", "987654"),
    (m.MsgType.HEARTBEAT, [201, *HB[1:]], "HEARTBEAT: field role:", "201"),
    (m.MsgType.HEARTBEAT, [*HB[:5], 777, *HB[6:]], "HEARTBEAT: field flags:", "777"),
    (m.MsgType.GOODBYE, [MARK, "bye"], "GOODBYE: field code:", MARK),
    (m.MsgType.SYNC_REQUEST, [MARK.encode()], "SYNC_REQUEST: field reason:", MARK),
    (m.MsgType.RECORDS, [0, 1, MARK * 9, 1, 2, None], "RECORDS: change 0: field id:", MARK),
    (
        m.MsgType.RECORDS,
        [1, 1, "a", 1, 2, None, 1, "b", 1, 2, MARK],
        "RECORDS: change 1: field blob:",
        MARK,
    ),
    (
        m.MsgType.RECORDS,
        [0, 1, "a", 1, 2, None, 99, "b", 1, 2, None],
        "change 1: field kind:",
        "99",
    ),
    (m.MsgType.RECORDS, [7, 1, "a", 1, 2, None], "RECORDS: field phase:", "7,"),
]


@pytest.mark.parametrize(("mtype", "body", "where", "value"), CASES, ids=lambda x: str(x)[:24])
def test_refusal_names_the_field_without_the_value(
    mtype: m.MsgType, body: list[Any], where: str, value: str
) -> None:
    with pytest.raises(MalformedMessage) as exc:
        m.decode(raw(mtype, body))
    assert where in exc.value.message
    assert value not in exc.value.message
    assert exc.value.code == "malformed_message"


def test_decoded_changes_are_change_tuples_sharing_the_blob() -> None:
    blob = b"\x91\x01" * 10
    _epoch, msg = m.decode(raw(m.MsgType.RECORDS, [1, 2, "x", 3, 4, blob, 1, "y", 5, 6, None]))
    assert isinstance(msg, m.Records) and msg.phase is m.Phase.BULK
    assert [type(c) for c in msg.changes] == [m.Change, m.Change]
    assert msg.changes == (m.Change(2, "x", 3, 4, blob), m.Change(1, "y", 5, 6, None))
    assert "\\x91" not in repr(msg.changes[0])  # a Change's repr never shows its blob


def test_messages_are_frozen() -> None:
    ack = m.Ack(3)
    with pytest.raises(AttributeError):
        ack.frame = 4  # type: ignore[misc]
    assert hash(ack) == hash(m.Ack(3))
