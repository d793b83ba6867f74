"""Each error carries its HTTP status on its class; one function builds every API error body."""

from __future__ import annotations

import pytest

from hasyncd.errors import (
    ApiError,
    ConfigError,
    HasyncdError,
    IdMismatch,
    NotReplicated,
    RecordError,
    RecordExpired,
    UnknownField,
    UnknownKind,
    WriteRefused,
    error_body,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RecordError("bad", field="spi"), 400),
        (UnknownField("bad", field="x"), 400),
        (IdMismatch("bad", field="id"), 400),
        (RecordExpired("gone", field="expires"), 400),
        (UnknownKind("no such kind", field="kind"), 404),
        (NotReplicated("pptp_session", "by design"), 422),
        (WriteRefused("not_primary", "secondary", primary="fw-b"), 409),
        (WriteRefused("no_in_sync_secondary", "none in sync"), 409),
        (WriteRefused("fenced", "re-verifying"), 503),
        (WriteRefused("handover_in_progress", "handing over"), 503),
        (WriteRefused("not_yet_placed", "new refusal"), 503),
        (ConfigError("bad file"), 500),
        (ApiError(413, "body_too_large", "too big"), 413),
    ],
)
def test_status_on_the_class(exc: HasyncdError, status: int) -> None:
    assert exc.http_status == status


def test_every_write_refusal_code_the_core_uses_has_its_status() -> None:
    assert set(WriteRefused.STATUS_BY_CODE) == {
        "not_primary",
        "no_in_sync_secondary",
        "fenced",
        "handover_in_progress",
    }


def test_error_bodies() -> None:
    assert error_body(RecordError("spi is not an integer", field="spi")) == {
        "error": "invalid_record",
        "message": "spi is not an integer",
        "field": "spi",
    }
    assert error_body(RecordError("no field")) == {"error": "invalid_record", "message": "no field"}
    # The API names an unknown kind itself: no "field" from the validator.
    assert error_body(UnknownKind("unknown record kind 'x'", field="kind")) == {
        "error": "unknown_kind",
        "message": "unknown record kind 'x'",
    }
    nr = NotReplicated("pptp_session", "by design")
    assert error_body(nr) == {
        "error": "not_replicated",
        "message": nr.message,
        "kind": "pptp_session",
        "reason": "by design",
    }
    # A request's refusal keeps "primary" even when unknown; a batch op's drops nulls.
    refused = WriteRefused("fenced", "re-verifying")
    assert error_body(refused) == {"error": "fenced", "message": "re-verifying", "primary": None}
    assert error_body(refused, status=True, rid="abc") == {
        "status": 503,
        "error": "fenced",
        "message": "re-verifying",
        "id": "abc",
    }
    assert list(error_body(refused, status=True, rid="abc")) == ["status", "error", "message", "id"]
    assert error_body(ApiError(404, "not_found", "no ipsec_sa x", kind=None, target="t")) == {
        "error": "not_found",
        "message": "no ipsec_sa x",
        "target": "t",
    }
