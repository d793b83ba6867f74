"""The reference endpoint's ESP transforms against scapy (independent code); its replay window."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from hasyncd.contrib import esp
from hasyncd.contrib.espd import EndpointConfig
from hasyncd.errors import ConfigError

GCM_KEY = bytes(range(32)) + b"salt"
CBC_KEY, HMAC_KEY = bytes(range(16, 48)), bytes(range(100, 132))
PEER, GW = "192.0.2.7", "198.51.100.1"


def record(alg: str, *, esn: bool = False, seq: int = 0, direction: str = "out") -> dict[str, Any]:
    rec: dict[str, Any] = {"proto": "esp", "spi": 0x1234, "esn": esn, "seq": seq}
    if alg == "gcm":
        rec.update(enc={"alg": "rfc4106(gcm(aes))", "key": GCM_KEY.hex()}, auth=None)
    else:
        rec.update(
            enc={"alg": "cbc(aes)", "key": CBC_KEY.hex()},
            auth={"alg": "hmac(sha256)", "key": HMAC_KEY.hex()},
        )
    if direction == "in":
        rec.update(replay_window=64, replay_bitmap=None)
    return rec


def scapy_sa(alg: str, *, esn: bool = False, esn_hi: int = 0, seq_num: int = 1) -> Any:
    kw: dict[str, Any] = (
        {"crypt_algo": "AES-GCM", "crypt_key": GCM_KEY, "auth_algo": "NULL"}
        if alg == "gcm"
        else {
            "crypt_algo": "AES-CBC",
            "crypt_key": CBC_KEY,
            "auth_algo": "SHA2-256-128",
            "auth_key": HMAC_KEY,
        }
    )
    return SecurityAssociation(
        ESP,
        spi=0x1234,
        seq_num=seq_num,
        tunnel_header=IP(src=PEER, dst=GW),
        nat_t_header=UDP(sport=4500, dport=4500),
        esn_en=esn,
        esn=esn_hi,
        **kw,
    )


INNER = IP(src="10.1.0.1", dst="10.0.0.1") / UDP(sport=1000, dport=7) / Raw(b"hello esp" * 3)


@pytest.mark.parametrize("alg", ["gcm", "cbc"])
@pytest.mark.parametrize("esn", [False, True])
def test_endpoint_packets_decrypt_in_scapy(alg: str, esn: bool) -> None:
    start = (5 << 32) + 7 if esn else 7
    sa = esp.outbound("x", record(alg, esn=esn, seq=start), ("127.0.0.1", 4500))
    peer = scapy_sa(alg, esn=esn, esn_hi=5 if esn else 0)
    for n in range(1, 4):
        wire = sa.seal(bytes(INNER), 4)
        spi, seq_lo = struct.unpack("!II", wire[:8])
        assert (spi, seq_lo) == (0x1234, (start + n) & esp.U32)
        if alg == "gcm":  # RFC 4106: the explicit IV is the 64-bit sequence number
            assert wire[8:16] == struct.pack("!Q", start + n)
        pkt = IP(src=GW, dst=PEER) / UDP(sport=4500, dport=4500) / ESP(wire)
        inner = peer.decrypt(pkt)
        assert bytes(inner) == bytes(INNER)
    assert sa.seq == start + 3 and sa.counters.packets == 3


@pytest.mark.parametrize("alg", ["gcm", "cbc"])
@pytest.mark.parametrize("esn", [False, True])
def test_scapy_packets_decrypt_in_the_endpoint(alg: str, esn: bool) -> None:
    base = (3 << 32) if esn else 0
    sa = esp.inbound("x", record(alg, esn=esn, seq=base, direction="in"))
    peer = scapy_sa(alg, esn=esn, esn_hi=3 if esn else 0)
    wires = [bytes(peer.encrypt(INNER)[ESP]) for _ in range(5)]
    for w in wires[:4]:
        payload, nh = sa.open(w)
        assert (payload, nh) == (bytes(INNER), 4)
    assert sa.window.top == base + 4
    with pytest.raises(esp.EspError) as err:  # a replay of an accepted packet
        sa.open(wires[1])
    assert err.value.code == "rx_replay"
    tampered = bytearray(wires[4])
    tampered[20] ^= 1
    with pytest.raises(esp.EspError) as err:
        sa.open(bytes(tampered))
    assert err.value.code == "rx_auth_failed"
    assert sa.window.top == base + 4  # a forgery does not move the window
    sa.open(wires[4])


def test_gcm_with_the_wrong_high_bits_fails_authentication() -> None:
    """The AAD carries seq_hi: a packet sealed under hi=1 does not open under hi=0."""
    out = esp.outbound("x", record("gcm", esn=True, seq=(1 << 32) + 10), ("h", 1))
    wire = out.seal(b"p" * 10, 4)
    inb = esp.inbound("x", record("gcm", esn=True, seq=5, direction="in"))
    with pytest.raises(esp.EspError) as err:
        inb.open(wire)
    assert err.value.code == "rx_auth_failed"


def window(size: int = 64, esn: bool = False, top: int = 0) -> esp.ReplayWindow:
    return esp.ReplayWindow(size, esn, top, 1 if top else 0)


def test_window_accepts_out_of_order_inside_and_refuses_left_of_it() -> None:
    w = window(32)
    for s in (1, 2, 5, 3, 40):
        w.accept(w.infer(s))
    assert w.top == 40
    for s in (40, 8):  # 40 was received; 8 is left of [9, 40]
        with pytest.raises(esp.EspError):
            w.infer(s)
    assert w.infer(9) == 9 and w.infer(39) == 39
    w.accept(39)
    with pytest.raises(esp.EspError):
        w.infer(39)
    with pytest.raises(esp.EspError):
        w.infer(0)


def test_window_jump_beyond_its_size_clears_the_bitmap() -> None:
    w = window(64, top=10)
    w.accept(w.infer(1000))
    assert w.bitmap == 1
    assert w.infer(999) == 999


def test_esn_inference_across_the_32_bit_boundary() -> None:
    w = window(64, esn=True, top=(1 << 32) - 3)  # Tl >= W-1: case A
    assert w.infer(5) == (1 << 32) + 5  # wrapped: the next high half
    assert w.infer(2**32 - 10) == 2**32 - 10  # inside the window, same half
    w.accept((1 << 32) + 5)  # now Tl = 5 < W-1: case B
    assert w.infer(2**32 - 20) == 2**32 - 20  # the previous half, inside the window
    assert w.infer(6) == (1 << 32) + 6
    with pytest.raises(esp.EspError):
        w.infer(2**32 - 3)  # already received (bit set since the record)


def test_non_esn_outbound_stops_at_2_32_minus_1() -> None:
    sa = esp.outbound("x", record("cbc", seq=esp.U32 - 1), ("h", 1))
    sa.seal(b"a", 4)
    with pytest.raises(esp.EspError) as err:
        sa.seal(b"a", 4)
    assert err.value.code == "tx_seq_exhausted" and sa.seq == esp.U32


def test_lease_limit_stops_sending() -> None:
    sa = esp.outbound("x", record("gcm", seq=100), ("h", 1))
    sa.limit = 101
    sa.seal(b"a", 4)
    with pytest.raises(esp.EspError) as err:
        sa.seal(b"a", 4)
    assert err.value.code == "tx_no_lease" and sa.seq == 101


def test_window_state_round_trips_through_the_record_fields() -> None:
    w = window(128)
    for s in (3, 7, 100, 130):
        w.accept(w.infer(s))
    again = esp.ReplayWindow.from_record(
        {"replay_window": 128, "seq": w.top, "replay_bitmap": w.bitmap_hex(), "esn": False}
    )
    assert (again.top, again.bitmap) == (130, w.bitmap)
    assert len(w.bitmap_hex()) == 32
    with pytest.raises(esp.EspError):
        again.infer(7)
    assert again.infer(8) == 8


def test_unsupported_records_are_refused_and_keys_stay_out_of_repr() -> None:
    with pytest.raises(esp.Unsupported):
        esp.transform({"proto": "esp", "enc": {"alg": "cbc(des)", "key": "00" * 8}})
    with pytest.raises(esp.Unsupported):
        esp.transform({"proto": "esp", "enc": {"alg": "cbc(aes)", "key": "00" * 16}, "auth": None})
    sa = esp.outbound("x", record("gcm"), ("h", 1))
    assert GCM_KEY.hex() not in repr(sa) and GCM_KEY.hex()[:8] not in repr(sa.xf)


def test_endpoint_config_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "esp.toml"
    cfg.write_text('[esp]\napi = "/run/x.sock"\nlisten = "127.0.0.1:4500"\nmode = "leases"\n')
    loaded = EndpointConfig.load(cfg)
    assert loaded.listen == ("127.0.0.1", 4500)
    assert (loaded.mode, loaded.lease_block) == ("leases", 65536)
    bads = ('mode = "both"', 'listen = "nowhere"', "lease_block = 1", "report_ms = 0")
    for bad in (*bads, 'lease_alone = "wait"'):
        body = '[esp]\napi = "/run/x.sock"\nlisten = "127.0.0.1:4500"\n' + bad + "\n"
        cfg.write_text(body.replace('listen = "127.0.0.1:4500"\nlisten', "listen"))
        with pytest.raises(ConfigError):
            EndpointConfig.load(cfg)
