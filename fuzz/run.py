"""Coverage-guided fuzzing (atheris) of everything that parses bytes from outside.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/run.py TARGET [libFuzzer options, e.g. -runs=100000 -max_total_time=60]

Targets: ``frames`` (the frame decoder), ``handshake`` (a responder's channel
fed arbitrary bytes: preamble, INIT, REJECT, transport frames), ``messages``
(the message codec), ``batch`` (NDJSON and msgpack batch bodies, JSON PUT
bodies).  Only hasyncd's own errors (``HasyncdError``: a refusal with a code)
may escape a parser; anything else is a finding, and the fuzzer stops with
the input that caused it.  The test command runs a short bounded pass of
each (tests/test_fuzz.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["hasyncd"]):  # our code, not the libraries'
    from hasyncd.daemon import batchops, bodies
    from hasyncd.errors import HasyncdError
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


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "handshake": handshake,
    "messages": decode_message,
    "batch": batch,
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
