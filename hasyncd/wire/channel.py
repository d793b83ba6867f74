"""One authenticated, encrypted connection: handshake, then AEAD transport frames.

A Channel is sans-IO: feed it received bytes, take the bytes it wants sent,
and ask it to seal messages.  It authenticates the peer and nothing more;
whether that peer may join (name and tag conflicts, duplicate connections)
is decided by the node core.

Phases:

    initiator:  start() -> INIT ............ RESP -> open
    responder:  INIT -> RESP ............... first transport frame -> open

The responder only trusts the initiator once a transport frame decrypts:
message 1 alone could be a replay, but only the holder of the ephemeral key
that message 2 was mixed with can produce that frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hasyncd.errors import (
    DecryptFailed,
    HandshakeError,
    PeerRejected,
    ProtocolError,
    UnexpectedMessage,
)
from hasyncd.secret import Secret
from hasyncd.wire import handshake as hs
from hasyncd.wire import messages
from hasyncd.wire.framing import (
    MAX_HANDSHAKE_FRAME,
    MAX_TRANSPORT_FRAME,
    MIN_REJECT_FRAME,
    MIN_TRANSPORT_FRAME,
    FrameDecoder,
    frame,
)
from hasyncd.wire.messages import PROTOCOL_VERSION, Hello, Message
from hasyncd.wire.noise import CipherState, NNpsk0


class State(Enum):
    AWAIT_INIT = "await_init"
    AWAIT_RESP = "await_resp"
    AWAIT_CONFIRM = "await_confirm"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Opened:
    """The peer is authenticated; ``hello`` is what it said about itself."""

    hello: Hello
    epoch: int


@dataclass(frozen=True, slots=True)
class Received:
    epoch: int
    message: Message
    frame_no: int  # the AEAD nonce of the frame: what an ACK refers to


ChannelEvent = Opened | Received


class Channel:
    def __init__(
        self,
        *,
        initiator: bool,
        psk: Secret,
        group_id: int,
        hello: Hello,
        epoch: int = 0,
        ephemeral: X25519PrivateKey | None = None,
        accept: tuple[Secret, ...] = (),
    ) -> None:
        """``psk`` is the key an initiator dials with; a responder accepts it or any of ``accept``.

        A responder picks the key by the INIT's key id (PROTOCOL.md section 5.2.1).
        """
        self.initiator = initiator
        self._psk = psk
        self._group_id = group_id
        self._key_id = hs.key_id(psk.reveal())
        self._accept = accept
        # The key id this link is (being) authenticated under; a responder learns it from INIT.
        self.key_id: bytes | None = self._key_id if initiator else None
        self._hello = hello
        self._epoch = epoch
        self._ephemeral = ephemeral
        self._noise: NNpsk0 | None = None
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self._out = bytearray()
        self.state = State.AWAIT_RESP if initiator else State.AWAIT_INIT
        self.peer_hello: Hello | None = None
        self.error: ProtocolError | None = None  # a failure after frames that were delivered
        self._pending_open: Opened | None = None

    def __repr__(self) -> str:
        peer = self.peer_hello.node if self.peer_hello else None
        return f"Channel(initiator={self.initiator}, state={self.state.value}, peer={peer!r})"

    # -- output ---------------------------------------------------------------

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def frames_sent(self) -> int:
        return self._send.n if self._send is not None else 0

    def start(self) -> None:
        """Initiator: queue the INIT frame."""
        assert self.initiator and self._noise is None
        preamble = hs.init_preamble(PROTOCOL_VERSION, self._group_id, self._key_id)
        self._noise = NNpsk0(
            initiator=True,
            psk=self._psk.reveal(),
            prologue=hs.prologue(preamble),
            ephemeral=self._ephemeral,
        )
        payload = messages.encode(self._hello, self._epoch)
        self._out += frame(preamble + self._noise.write_message_1(payload))

    def send(self, msg: Message, epoch: int) -> tuple[int, int]:
        """Seal one message into the output; returns (frame number, bytes queued)."""
        if self.state is not State.OPEN:
            raise ProtocolError(f"cannot send on a channel in state {self.state.value}")
        assert self._send is not None
        frame_no = self._send.n
        sealed = frame(self._send.encrypt(b"", messages.encode(msg, epoch)))
        self._out += sealed
        return frame_no, len(sealed)

    def reject(self, code: hs.RejectCode, text: str) -> None:
        """Queue a REJECT (only meaningful during the handshake) and close."""
        if self.state in (State.AWAIT_INIT, State.AWAIT_RESP, State.AWAIT_CONFIRM):
            self._out += frame(hs.reject_body(PROTOCOL_VERSION, code, text))
        self.state = State.CLOSED

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ChannelEvent]:
        """Process received bytes; the link must close after a ProtocolError.

        Frames that were authentic before a failing one in the same chunk are
        still delivered (a GOODBYE among them says why the peer left): the
        error is then kept in ``error`` instead of raised, and the channel is
        closed either way.
        """
        if self.state is State.CLOSED:
            return []
        self._decoder.feed(data)
        return self._drain()

    def _drain(self) -> list[ChannelEvent]:
        events: list[ChannelEvent] = []
        try:
            while self.state is not State.CLOSED:
                body = self._decoder.next_frame()
                if body is None:
                    break
                self._on_frame(body, events)
        except HandshakeError as exc:
            self._fail_handshake(exc)
            raise
        except ProtocolError as exc:
            self.state = State.CLOSED
            if not events:
                raise
            self.error = exc
        return events

    def receive_eof(self) -> None:
        """The peer closed the stream; raises FrameTruncated if it did so inside a frame."""
        self.state = State.CLOSED
        self._decoder.check_eof()

    def _fail_handshake(self, exc: HandshakeError) -> None:
        try:
            code = hs.RejectCode.from_label(exc.code)
        except KeyError:
            code = hs.RejectCode.MALFORMED
        self.reject(code, exc.message)

    def _on_frame(self, body: bytes, events: list[ChannelEvent]) -> None:
        if self.state is State.OPEN:
            events.append(self._on_transport(body))
            return
        # A REJECT while awaiting the confirmation (the initiator refused our
        # RESP, and says why) falls through to the handshake parsing below.
        if self.state is State.AWAIT_CONFIRM and not _is_reject(body):
            received = self._on_transport(body)
            assert self._pending_open is not None
            # The confirming frame proves the initiator; it is a message too.
            events.append(self._pending_open)
            events.append(received)
            self._pending_open = None
            self.state = State.OPEN
            self._decoder.min_frame = MIN_TRANSPORT_FRAME
            return
        version, kind = hs.parse_kind(body)
        if kind is hs.HsType.REJECT:
            self.state = State.CLOSED
            code, text = hs.parse_reject(body)
            raise PeerRejected(code, f"peer refused the link: {code}: {text}")
        if version != PROTOCOL_VERSION:
            raise HandshakeError(
                "version_mismatch",
                f"peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}",
            )
        if self.state is State.AWAIT_INIT and kind is hs.HsType.INIT:
            self._on_init(body)
            return
        if self.state is State.AWAIT_RESP and kind is hs.HsType.RESP:
            events.append(self._on_resp(body))
            return
        raise HandshakeError("malformed", f"unexpected {kind.name} frame in {self.state.value}")

    def _on_init(self, body: bytes) -> None:
        if len(body) < hs.INIT_PREAMBLE_LEN:
            raise HandshakeError("malformed", "INIT frame shorter than its preamble")
        group_id = body[6]
        if group_id != self._group_id:
            raise HandshakeError(
                "group_mismatch", f"peer is in group_id {group_id}, this node in {self._group_id}"
            )
        kid = body[7 : hs.INIT_PREAMBLE_LEN]
        psk = self._key_by_id(kid)
        if psk is None:
            held = ", ".join(hs.key_id(k.reveal()).hex() for k in (self._psk, *self._accept))
            raise HandshakeError(
                "psk_mismatch",
                f"peer uses a different pre-shared key (key id {kid.hex()}, this node {held})",
            )
        self.key_id = kid
        preamble = body[: hs.INIT_PREAMBLE_LEN]
        noise = NNpsk0(
            initiator=False,
            psk=psk.reveal(),
            prologue=hs.prologue(preamble),
            ephemeral=self._ephemeral,
        )
        try:
            payload = noise.read_message_1(body[hs.INIT_PREAMBLE_LEN :])
        except DecryptFailed:
            raise HandshakeError(
                "auth_failed",
                "handshake authentication failed although key ids match: "
                "the INIT frame was tampered with or corrupted",
            ) from None
        peer_epoch, hello = _decode_hello(payload)
        reply = messages.encode(self._hello, self._epoch)
        message2, self._send, self._recv = noise.write_message_2(reply)
        self._out += frame(hs.resp_preamble(PROTOCOL_VERSION) + message2)
        self.peer_hello = hello
        self._pending_open = Opened(hello, peer_epoch)
        self._enter_transport(State.AWAIT_CONFIRM)

    def _key_by_id(self, kid: bytes) -> Secret | None:
        if kid == self._key_id:
            return self._psk
        for key in self._accept:
            if hs.key_id(key.reveal()) == kid:
                return key
        return None

    def _on_resp(self, body: bytes) -> ChannelEvent:
        assert self._noise is not None
        try:
            payload, self._send, self._recv = self._noise.read_message_2(
                body[hs.RESP_PREAMBLE_LEN :]
            )
        except DecryptFailed:
            raise HandshakeError(
                "auth_failed", "handshake authentication failed: RESP frame did not decrypt"
            ) from None
        peer_epoch, hello = _decode_hello(payload)
        self.peer_hello = hello
        self._enter_transport(State.OPEN)
        return Opened(hello, peer_epoch)

    def _enter_transport(self, state: State) -> None:
        self._noise = None  # drop the ephemeral key: forward secrecy
        self._decoder.max_frame = MAX_TRANSPORT_FRAME
        # Until the initiator confirms, a short REJECT may still arrive.
        self._decoder.min_frame = MIN_TRANSPORT_FRAME if state is State.OPEN else MIN_REJECT_FRAME
        self.state = state

    def _on_transport(self, body: bytes) -> Received:
        assert self._recv is not None
        frame_no = self._recv.n
        plaintext = self._recv.decrypt(b"", body)
        epoch, msg = messages.decode(plaintext)
        if isinstance(msg, Hello):
            raise UnexpectedMessage("HELLO is only valid inside the handshake")
        return Received(epoch, msg, frame_no)


def _is_reject(body: bytes) -> bool:
    # A ciphertext matches these 5 bytes (magic, REJECT type) with probability 2^-40;
    # the cost of a false positive is one reconnect.
    return body[:4] == hs.MAGIC and len(body) >= 7 and body[5] == hs.HsType.REJECT


def _decode_hello(payload: bytes) -> tuple[int, Hello]:
    try:
        epoch, hello = messages.decode(payload)
    except ProtocolError as exc:
        raise HandshakeError("malformed", f"bad HELLO payload: {exc.message}") from None
    if not isinstance(hello, Hello):
        raise HandshakeError("malformed", "handshake payload is not a HELLO")
    return epoch, hello
