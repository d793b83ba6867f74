"""Coverage-guided fuzzing (atheris) of everything that parses bytes from outside.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/run.py TARGET [libFuzzer options, e.g. -runs=100000 -max_total_time=60]

Targets: ``frames`` (the frame decoder), ``handshake`` (a responder's channel
fed arbitrary bytes: preamble, INIT, REJECT, transport frames), ``messages``
(the message codec), ``batch`` (NDJSON and msgpack batch bodies, JSON PUT
bodies), ``records`` (the record codecs: the link's check of a replicated
blob, ``Kind.validate_blob``, against the full ``Kind.from_blob``, and the
API's record decode, JSON body to ``Record``, of a PUT and of an NDJSON batch
op).  Only hasyncd's own errors (``HasyncdError``: a refusal with a code)
may escape a parser; anything else is a finding, and the fuzzer stops with
the input that caused it.  The test command runs a short bounded pass of
each (tests/test_fuzz.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["hasyncd"]):  # our code, not the libraries'
    from hasyncd import samples
    from hasyncd.daemon import batchops, bodies
    from hasyncd.errors import HasyncdError
    from hasyncd.records import KINDS, Kind
    from hasyncd.secret import Secret
    from hasyncd.wire import messages
    from hasyncd.wire.channel import Channel
    from hasyncd.wire.framing import MAX_TRANSPORT_FRAME, FrameDecoder
    from hasyncd.wire.messages import Hello

PSK = Secret(bytes(range(32)))
HELLO = Hello("fuzz", bytes(16), 7, 1 << 20, "")
# Frames decoded per input: a short input cannot hold more, and the bound keeps
# one input's run time flat.
MAX_FRAMES = 64


def frames(data: bytes) -> None:
    dec = FrameDecoder(MAX_TRANSPORT_FRAME)
    half = len(data) // 2  # in two pieces: a frame split across reads
    for piece in (data[:half], data[half:]):
        dec.feed(piece)
        for _ in range(MAX_FRAMES):
            if dec.next_frame() is None:
                break
    dec.check_eof()


def handshake(data: bytes) -> None:
    ch = Channel(initiator=False, psk=PSK, group_id=1, hello=HELLO)
    ch.receive_data(data)
    ch.take_output()


def decode_message(data: bytes) -> None:
    messages.decode(data)


def batch(data: bytes) -> None:
    with contextlib.suppress(HasyncdError):  # NDJSON, as the API takes it: count, then decode
        batchops.count_ndjson_ops(data)
        for _op in batchops.iter_ndjson_ops(data):
            pass
    with contextlib.suppress(HasyncdError):
        for _op in bodies.iter_msgpack_batch(data):
            pass
    bodies.decode_json(data)


# One valid record of each kind (id, API JSON text, blob): the records target
# splices fuzz bytes into them, so that most inputs get past the decoder to
# the kind's range, rule and id checks instead of failing at the first byte.
_SAMPLE_TIME = 1_700_000_000.0
_SAMPLES = [
    samples.ipsec_sa(1, "out", _SAMPLE_TIME),
    samples.ike_sa(1, _SAMPLE_TIME),
    samples.web_session(1, _SAMPLE_TIME),
]
RECORD_SEEDS: list[tuple[Kind, str, bytes, bytes]] = []
# The API-writable kinds; the internal ones (promotion, sa_counters) are written
# by hasyncd itself and have no API JSON form to splice into.
_API_KINDS = [k for k in KINDS.values() if k.api_writable]
for _kind, (_rid, _rec) in zip(_API_KINDS, _SAMPLES, strict=True):
    _raw = json.dumps(_rec).encode()
    RECORD_SEEDS.append((_kind, _rid, _raw, _kind.parse_json(_raw, _rid).blob))


def _splice(base: bytes, at: int, data: bytes) -> bytes:
    at %= len(base) + 1
    return base[:at] + data + base[at + len(data) :]


def records(data: bytes) -> None:
    """The record codecs on the link (blob) and in the API (JSON) for one kind and id.

    Byte 0 picks the kind; byte 1 the mode: bit 0 uses the sample's valid id
    (else an id cut from the input), bit 1 splices the rest of the input into
    the sample's blob and JSON (else uses it as it is), bits 2.. where.
    """
    if len(data) < 2:
        return
    kind, sample_rid, sample_json, sample_blob = RECORD_SEEDS[data[0] % len(RECORD_SEEDS)]
    mode, rest = data[1], data[2:]
    rid = sample_rid if mode & 1 else rest[: mode >> 2].decode("utf-8", "replace")
    blob = _splice(sample_blob, mode >> 2, rest) if mode & 2 else rest
    text = _splice(sample_json, mode >> 2, rest) if mode & 2 else rest
    # The link: the secondary's flattened check must agree with the full one.
    try:
        expiry = kind.validate_blob(blob, rid)
    except HasyncdError:
        accepted = False
    else:
        accepted = True
        record = kind.from_blob(blob, rid)  # raises (a finding) if it disagrees
        assert record.expires == expiry, "validate_blob and from_blob disagree on the expiry"
    if not accepted:
        with contextlib.suppress(HasyncdError):
            kind.from_blob(blob, rid)
            raise AssertionError("validate_blob refused a blob that from_blob accepts")
    # The API: an NDJSON batch op's record text, and a PUT body (JSON, then the kind).
    with contextlib.suppress(HasyncdError):
        kind.parse_json(text, rid)
    kind.from_json(bodies.decode_json(text), rid)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "handshake": handshake,
    "messages": decode_message,
    "batch": batch,
    "records": records,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]

    def one_input(data: bytes) -> None:
        # A refusal with a code is what a parser is supposed to do; anything else escapes.
        with contextlib.suppress(HasyncdError):
            target(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
