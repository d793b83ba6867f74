"""The cleartext preamble around the Noise handshake, and the REJECT frame.

The first frame in each direction is a handshake frame.  Its fixed start
(magic, protocol version, frame type) never changes between protocol versions,
so two nodes of different versions can always tell each other why they cannot
pair:

    INIT    "HSYN" | u8 version | u8 1 | u8 group_id | key_id[8] | Noise message 1
    RESP    "HSYN" | u8 version | u8 2 | Noise message 2
    REJECT  "HSYN" | u8 version | u8 3 | u8 reason code | UTF-8 text (<= 200 bytes)

``key_id`` is an HMAC of the PSK: it lets a node report "different key"
instead of a bare authentication failure.  It reveals nothing about a 256-bit
random key.  The INIT preamble is the Noise prologue, so tampering with the
group or version is caught by the handshake itself.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import IntEnum

from hasyncd.errors import HandshakeError

MAGIC = b"HSYN"
PROLOGUE_LABEL = b"hasyncd link v1|"
KEY_ID_LABEL = b"hasyncd v1 key id"
KEY_ID_LEN = 8
INIT_PREAMBLE_LEN = 4 + 1 + 1 + 1 + KEY_ID_LEN
RESP_PREAMBLE_LEN = 4 + 1 + 1
MAX_REJECT_TEXT = 200


class HsType(IntEnum):
    INIT = 1
    RESP = 2
    REJECT = 3


class RejectCode(IntEnum):
    VERSION_MISMATCH = 1
    GROUP_MISMATCH = 2
    PSK_MISMATCH = 3
    AUTH_FAILED = 4
    MALFORMED = 5
    NAME_CONFLICT = 6
    TAG_CONFLICT = 7
    BUSY = 8

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> RejectCode:
        return cls[label.upper()]


def key_id(psk: bytes) -> bytes:
    return hmac.new(psk, KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_LEN]


def init_preamble(version: int, group_id: int, kid: bytes) -> bytes:
    return MAGIC + bytes((version, HsType.INIT, group_id)) + kid


def prologue(preamble: bytes) -> bytes:
    return PROLOGUE_LABEL + preamble


def resp_preamble(version: int) -> bytes:
    return MAGIC + bytes((version, HsType.RESP))


def reject_body(version: int, code: RejectCode, text: str) -> bytes:
    raw = text.encode("utf-8", "replace")[:MAX_REJECT_TEXT]
    return MAGIC + bytes((version, HsType.REJECT, code)) + raw


def parse_kind(body: bytes) -> tuple[int, HsType]:
    """(peer version, frame type) of a handshake frame; raises HandshakeError."""
    if len(body) < 6 or body[:4] != MAGIC:
        raise HandshakeError("malformed", "first frame is not a hasyncd handshake (bad magic)")
    try:
        kind = HsType(body[5])
    except ValueError:
        raise HandshakeError("malformed", f"unknown handshake frame type {body[5]}") from None
    return body[4], kind


def parse_reject(body: bytes) -> tuple[str, str]:
    """(reason label, peer's text) of a REJECT frame."""
    if len(body) < 7:
        raise HandshakeError("malformed", "truncated REJECT frame")
    try:
        label = RejectCode(body[6]).label
    except ValueError:
        label = f"code_{body[6]}"
    text = body[7 : 7 + MAX_REJECT_TEXT].decode("utf-8", "replace")
    return label, "".join(ch if ch.isprintable() else "?" for ch in text)
