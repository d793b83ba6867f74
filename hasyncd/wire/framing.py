"""Length-prefixed framing with limits checked before anything is allocated.

Every frame on a link is ``u32 length (big endian) || body``.  The decoder
checks the length against the limit of the link's current phase as soon as
the four prefix bytes are in, so an oversized frame is refused before its
body is buffered, allocated or decrypted.
"""

from __future__ import annotations

import struct

from hasyncd.errors import FrameTooLarge, FrameTooSmall, FrameTruncated

LENGTH = struct.Struct(">I")
PREFIX_LEN = LENGTH.size

# Handshake frames carry a 15-byte preamble, a 32-byte ephemeral key, a HELLO
# payload (< 200 bytes: a 32-char name and a few integers) and a 16-byte tag.
# 1 KiB leaves room for later HELLO fields and still stops memory abuse by
# unauthenticated peers.
MAX_HANDSHAKE_FRAME = 1024

# A transport frame is one Noise transport message, whose maximum size Noise
# fixes at 65535 bytes including the 16-byte tag.  Staying inside that limit
# keeps any conforming Noise library usable for another implementation.
MAX_TRANSPORT_FRAME = 65535

# The smallest legal transport frame is a 10-byte message header plus the tag.
MIN_TRANSPORT_FRAME = 10 + 16
# A REJECT is magic, version, type and a reason code: 7 bytes and any text.
# A responder still expects one until the initiator's first transport frame.
MIN_REJECT_FRAME = 7


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies; ``max_frame`` may change per phase."""

    __slots__ = ("_buf", "_pos", "max_frame", "min_frame")

    def __init__(self, max_frame: int = MAX_HANDSHAKE_FRAME, min_frame: int = 1) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame
        self.min_frame = min_frame

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Compact lazily: once per feed, not once per frame.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < PREFIX_LEN:
            return None
        (length,) = LENGTH.unpack_from(buf, pos)
        if length > self.max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        if length < self.min_frame:
            raise FrameTooSmall(f"frame of {length} bytes is below the minimum of {self.min_frame}")
        end = pos + PREFIX_LEN + length
        if len(buf) < end:
            return None
        body = bytes(buf[pos + PREFIX_LEN : end])
        self._pos = end
        return body

    def check_eof(self) -> None:
        """At end of stream: a partial frame means the peer's frame was truncated."""
        if self.buffered:
            raise FrameTruncated(
                f"connection closed inside a frame ({self.buffered} bytes pending)"
            )
