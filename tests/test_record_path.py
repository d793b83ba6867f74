"""One record path: nothing the API would refuse reaches a store, whoever writes it."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hasyncd.errors import RecordError
from hasyncd.records import KINDS, Record
from hasyncd.sim import Sim

from .simutil import SA, WEB, pair, record, snapshot


def _refused_blobs() -> list[tuple[int, str, bytes]]:
    """Blobs whose JSON form the API refuses, built by hand the way a buggy writer would."""
    rid, blob, _ = record(SA, 3)
    wire: list[Any] = msgpack.unpackb(blob, raw=False)
    spi_low = list(wire)
    spi_low[3] = 255  # spi below 256
    host_bits = list(wire)
    # one selector 10.0.0.1/16 -> 10.100.0.0/16: host bits set in its source
    host_bits[19] = [[[b"\x0a\x00\x00\x01", 16], [b"\x0a\x64\x00\x00", 16], 0, 0, 0]]
    wid, wblob, _ = record(WEB, 3)
    web: list[Any] = msgpack.unpackb(wblob, raw=False)
    control = list(web)
    control[0] = "user\n"  # a control character in a name
    return [
        (SA, rid, b"\xc1"),  # not msgpack
        (SA, rid, msgpack.packb(spi_low, use_bin_type=True)),
        (SA, rid, msgpack.packb(host_bits, use_bin_type=True)),
        (SA, "esp-00000001@203.0.113.9", blob),  # the id does not match the fields
        (WEB, wid, msgpack.packb(control, use_bin_type=True)),
        (WEB, wid, msgpack.packb([*web, None], use_bin_type=True)),  # an extra field
    ]


@pytest.mark.parametrize(("kind", "rid", "blob"), _refused_blobs())
def test_the_simulator_cannot_store_a_record_the_api_refuses(
    kind: int, rid: str, blob: bytes
) -> None:
    sim = Sim(seed=3)
    primary, secondary = pair(sim)
    before = snapshot(sim, primary)
    with pytest.raises(RecordError):
        sim.write(primary, kind, rid, blob)
    sim.run_for(0.2)
    assert snapshot(sim, primary) == before
    assert snapshot(sim, secondary) == before


def test_the_core_takes_validated_records_only() -> None:
    sim = Sim(seed=4)
    primary, _ = pair(sim)
    core = sim.nodes[primary].core
    rid, blob, _ = record(SA, 1)
    with pytest.raises(TypeError):
        core.write(blob, sim.now, wall=sim.wall)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Record(object(), KINDS["ipsec_sa"], rid, value=None, blob=blob, expires=None)
    assert sim.write(primary, SA, rid, blob) is not None  # the same blob, validated, is taken
