"""The exception hierarchy: one base class, error codes carried by the exception.

Errors are raised where they are detected, deep in a codec or a validator, and
handled once at a boundary (the link, the API handler, the config loader).  The
boundary turns the ``code`` into a metric label and the message into a log line
or an HTTP error body; nothing below it logs or counts.  No message ever
includes key material: validators name the field, never echo its value.
"""

from __future__ import annotations


class HasyncdError(Exception):
    """Base of every error hasyncd raises on purpose."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HasyncdError):
    """The configuration file (or a file it names) is unusable."""

    code = "config"


class RecordError(HasyncdError):
    """A record body, id or kind is invalid; ``field`` names the offending path."""

    code = "invalid_record"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownField(RecordError):
    code = "unknown_field"


class IdMismatch(RecordError):
    code = "id_mismatch"


class RecordExpired(RecordError):
    """A write of a record whose expiry has already passed on this node's clock."""

    code = "expired"


class UnknownKind(RecordError):
    code = "unknown_kind"


class ReadOnlyKind(RecordError):
    """A kind hasyncd writes itself (``KindPolicy.internal``): the records API only reads it."""

    code = "read_only_kind"


class NotReplicated(RecordError):
    """A kind hasyncd deliberately does not replicate (see ``hasyncd.policy``)."""

    code = "not_replicated"

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"kind {kind!r} is not replicated: {reason}")
        self.kind = kind
        self.reason = reason


class WriteRefused(HasyncdError):
    """A local write cannot be accepted in the node's current state."""

    code = "write_refused"

    def __init__(self, code: str, message: str, primary: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.primary = primary


class PortalError(HasyncdError):
    """The reference web portal cannot complete a request (``hasyncd.portal``).

    ``code`` is precise (``api_unreachable``, ``not_primary``, ``api_error``...);
    messages name the session by at most an 8-hex-character digest prefix.
    """

    code = "portal"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EspError(HasyncdError):
    """The reference ESP endpoint (``hasyncd.contrib``) drops a packet or cannot run an SA.

    ``code`` names the endpoint counter it goes to (``rx_replay``,
    ``rx_auth_failed``, ``tx_no_lease``...); messages never carry key material.
    """

    code = "esp"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(HasyncdError):
    """A peer sent something the link protocol does not allow.

    The link that raised it is closed; the code is counted under
    ``hasyncd_link_errors_total{code=...}``.
    """

    code = "protocol"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class FrameTooSmall(ProtocolError):
    code = "frame_too_small"


class FrameTruncated(ProtocolError):
    code = "frame_truncated"


class DecryptFailed(ProtocolError):
    """AEAD tag check failed: tampering, replay, reordering or a wrong key."""

    code = "decrypt_failed"


class MalformedMessage(ProtocolError):
    code = "malformed_message"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"


class UnknownMessageType(ProtocolError):
    code = "unknown_message_type"


class UnexpectedMessage(ProtocolError):
    """A well-formed message that is not allowed in the link's current state."""

    code = "unexpected_message"


class HandshakeError(ProtocolError):
    """The handshake failed locally; ``code`` is one of the reject codes."""

    code = "handshake_failed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerRejected(ProtocolError):
    """The peer refused our handshake and told us why (``code``)."""

    code = "peer_rejected"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
