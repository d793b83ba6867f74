"""The exception hierarchy: one base class, error codes carried by the exception.

Errors are raised where they are detected, deep in a codec or a validator, and
handled once at a boundary (the link, the API handler, the config loader).  The
boundary turns the ``code`` into a metric label and the message into a log line
or an HTTP error body; nothing below it logs or counts.  No message ever
includes key material: validators name the field, never echo its value.

Each class carries the HTTP status the API answers it with (``http_status``,
as h11's ``error_status_hint``) and the extra body fields it adds
(``details``); ``error_body`` builds every API error body from them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HasyncdError(Exception):
    """Base of every error hasyncd raises on purpose."""

    code: str = "error"
    # What the API answers when this error reaches it: an error of ours that
    # no subclass placed is a server-side failure.
    http_status: int = 500
    # Extra body fields sent even when None (a client tests for their presence).
    nullable: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Extra fields of the API error body (None values are left out, but ``nullable``)."""
        return {}


class ApiError(HasyncdError):
    """A refusal of the local API: the HTTP status, the error code and extra body fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.extra = extra

    @property
    def status(self) -> int:
        return self.http_status

    def details(self) -> dict[str, Any]:
        return self.extra


def error_body(
    exc: HasyncdError, *, status: bool = False, rid: str | None = None
) -> dict[str, Any]:
    """The JSON (or msgpack) body of an API refusal: ``{"error", "message", ...details}``.

    The one place every error body is built: a request's reply, a batch op's
    result (``status=True`` adds the HTTP status in front, ``rid`` the op's
    id; no null fields there) and the refusals aiohttp's parser makes.
    """
    body: dict[str, Any] = {"status": exc.http_status} if status else {}
    body["error"] = exc.code
    body["message"] = exc.message
    if rid is not None:
        body["id"] = rid
    keep = frozenset() if status else exc.nullable
    body.update({k: v for k, v in exc.details().items() if v is not None or k in keep})
    return body


class ConfigError(HasyncdError):
    """The configuration file (or a file it names) is unusable."""

    code = "config"


class RecordError(HasyncdError):
    """A record body, id or kind is invalid; ``field`` names the offending path."""

    code = "invalid_record"
    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, Any]:
        return {"field": self.field}


class UnknownField(RecordError):
    code = "unknown_field"


class IdMismatch(RecordError):
    code = "id_mismatch"


class RecordExpired(RecordError):
    """A write of a record whose expiry has already passed on this node's clock."""

    code = "expired"


class UnknownKind(RecordError):
    code = "unknown_kind"
    http_status = 404

    def details(self) -> dict[str, Any]:
        return {}  # the API names the kind itself (``kind``), not the field


class ReadOnlyKind(RecordError):
    """A kind hasyncd writes itself (``KindPolicy.internal``): the records API only reads it."""

    code = "read_only_kind"


class NotReplicated(RecordError):
    """A kind hasyncd deliberately does not replicate (see ``hasyncd.policy``)."""

    code = "not_replicated"
    http_status = 422

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"kind {kind!r} is not replicated: {reason}")
        self.kind = kind
        self.reason = reason

    def details(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason}


class WriteRefused(HasyncdError):
    """A local write cannot be accepted in the node's current state."""

    code = "write_refused"
    # By refusal code: 409 when another node should take the write (or the
    # request cannot succeed as asked), 503 while this node cannot take it yet.
    STATUS_BY_CODE: ClassVar[dict[str, int]] = {
        "not_primary": 409,
        "no_in_sync_secondary": 409,
        "fenced": 503,
        "handover_in_progress": 503,
    }
    http_status = 503
    nullable = frozenset({"primary"})

    def __init__(self, code: str, message: str, primary: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.primary = primary
        self.http_status = self.STATUS_BY_CODE.get(code, WriteRefused.http_status)

    def details(self) -> dict[str, Any]:
        return {"primary": self.primary}


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
