"""ESP packets for the reference endpoint: the transforms and the anti-replay window, no I/O.

Owns what one ``ipsec_sa`` record means on the wire: the algorithm mapping
from the record's xfrm-style names, the packet layout (RFC 4303 section 2),
AES-GCM with the 8-byte explicit IV set to the 64-bit sequence number
(RFC 4106), AES-CBC with HMAC-SHA-2 truncated to half its length (RFC 4868),
the high-order ESN bits in the ICV/AAD (RFC 4303 section 2.2.1) and the
receiver's anti-replay window with ESN inference (RFC 4303 Appendix A).
The replay bitmap's encoding is the one hasyncd replicates: bit k of the
big-endian integer ``replay_bitmap`` is set when ``seq - k`` was received.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hasyncd.errors import EspError

U32 = 2**32 - 1
U64 = 2**64 - 1
ESP_HEADER = struct.Struct("!II")  # SPI, low 32 bits of the sequence number
# RFC 4303 section 3.4.3 asks for a window of at least 32 and a default of 64;
# a record with replay_window 0 gets the default: this endpoint always checks.
DEFAULT_REPLAY_WINDOW = 64
GCM_SALT = 4  # RFC 4106 section 8.1: the key material ends with a 4-byte salt
GCM_ICV = 16  # rfc4106(gcm(aes)) as xfrm installs it by default: a 128-bit tag
GCM_IV = 8
CBC_IV = 16
# xfrm name -> (hash name, ICV length): RFC 4868 truncates to half the output.
HMACS = {
    "hmac(sha256)": ("sha256", 16),
    "hmac(sha384)": ("sha384", 24),
    "hmac(sha512)": ("sha512", 32),
}
AES_KEYS = (16, 24, 32)


class Unsupported(EspError):
    """An SA record this endpoint cannot run (algorithm, key length, AH)."""

    def __init__(self, message: str) -> None:
        super().__init__("sa_unsupported", message)


# --- the transforms ----------------------------------------------------------------------


class Transform:
    """Seals and opens one SA's payloads; ``seq`` is the full 64-bit sequence number."""

    iv_len = 0
    icv_len = 0
    block = 4

    def seal(self, header: bytes, seq: int, esn: bool, plain: bytes) -> bytes:
        raise NotImplementedError

    def open(self, header: bytes, seq: int, esn: bool, body: bytes) -> bytes:
        raise NotImplementedError


class Gcm(Transform):
    """``rfc4106(gcm(aes))``: nonce = salt || IV, IV = the sequence number, AAD = SPI || seq."""

    iv_len, icv_len, block = GCM_IV, GCM_ICV, 4

    def __init__(self, keymat: bytes) -> None:
        if len(keymat) - GCM_SALT not in AES_KEYS:
            raise Unsupported(f"rfc4106(gcm(aes)) needs 20, 28 or 36 key bytes, not {len(keymat)}")
        self._aead = AESGCM(keymat[:-GCM_SALT])
        self._salt = keymat[-GCM_SALT:]

    def __repr__(self) -> str:
        return "Gcm(<key>)"

    @staticmethod
    def _aad(header: bytes, seq: int, esn: bool) -> bytes:
        return header[:4] + struct.pack("!I", seq >> 32) + header[4:] if esn else header

    def seal(self, header: bytes, seq: int, esn: bool, plain: bytes) -> bytes:
        iv = struct.pack("!Q", seq)
        return iv + self._aead.encrypt(self._salt + iv, plain, self._aad(header, seq, esn))

    def open(self, header: bytes, seq: int, esn: bool, body: bytes) -> bytes:
        iv = body[:GCM_IV]
        try:
            return self._aead.decrypt(self._salt + iv, body[GCM_IV:], self._aad(header, seq, esn))
        except InvalidTag:
            raise EspError("rx_auth_failed", "ICV check failed") from None


class CbcHmac(Transform):
    """``cbc(aes)`` + ``hmac(sha2)``: encrypt-then-MAC, the ICV also covers seq_hi under ESN."""

    iv_len, block = CBC_IV, 16

    def __init__(self, enc_key: bytes, auth_alg: str, auth_key: bytes) -> None:
        if len(enc_key) not in AES_KEYS:
            raise Unsupported(f"cbc(aes) needs 16, 24 or 32 key bytes, not {len(enc_key)}")
        self._enc = enc_key
        self._hash, self.icv_len = HMACS[auth_alg]
        self._auth = auth_key

    def __repr__(self) -> str:
        return f"CbcHmac(<key>, {self._hash})"

    def _icv(self, header: bytes, seq: int, esn: bool, body: bytes) -> bytes:
        tail = struct.pack("!I", seq >> 32) if esn else b""
        mac = hmac.new(self._auth, header + body + tail, self._hash).digest()
        return mac[: self.icv_len]

    def seal(self, header: bytes, seq: int, esn: bool, plain: bytes) -> bytes:
        iv = os.urandom(CBC_IV)  # RFC 3602: unpredictable
        enc = Cipher(algorithms.AES(self._enc), modes.CBC(iv)).encryptor()
        body = iv + enc.update(plain) + enc.finalize()
        return body + self._icv(header, seq, esn, body)

    def open(self, header: bytes, seq: int, esn: bool, body: bytes) -> bytes:
        data, icv = body[: -self.icv_len], body[-self.icv_len :]
        if not hmac.compare_digest(icv, self._icv(header, seq, esn, data)):
            raise EspError("rx_auth_failed", "ICV check failed")
        if (len(data) - CBC_IV) % 16:
            raise EspError("rx_malformed", "ciphertext is not a whole number of blocks")
        dec = Cipher(algorithms.AES(self._enc), modes.CBC(data[:CBC_IV])).decryptor()
        return dec.update(data[CBC_IV:]) + dec.finalize()


def transform(record: dict[str, Any]) -> Transform:
    """The transform for an ``ipsec_sa`` record's ``enc``/``auth`` (API JSON form)."""
    if record.get("proto") != "esp" or record.get("enc") is None:
        raise Unsupported("only ESP SAs with encryption")
    enc, auth = record["enc"], record.get("auth")
    key = bytes.fromhex(enc["key"])
    if enc["alg"] == "rfc4106(gcm(aes))":
        if auth is not None:
            raise Unsupported("rfc4106(gcm(aes)) takes no separate auth algorithm")
        return Gcm(key)
    if enc["alg"] == "cbc(aes)":
        if auth is None or auth["alg"] not in HMACS:
            raise Unsupported(f"cbc(aes) needs auth one of {', '.join(HMACS)}")
        return CbcHmac(key, auth["alg"], bytes.fromhex(auth["key"]))
    raise Unsupported(f"encryption algorithm {enc['alg']!r}")


def pad(payload: bytes, next_header: int, block: int) -> bytes:
    """RFC 4303 section 2.4: payload, padding 1, 2, 3..., pad length, next header."""
    npad = (-(len(payload) + 2)) % block
    return payload + bytes(range(1, npad + 1)) + bytes((npad, next_header))


def unpad(plain: bytes) -> tuple[bytes, int]:
    if len(plain) < 2:
        raise EspError("rx_malformed", "no ESP trailer")
    npad, next_header = plain[-2], plain[-1]
    end = len(plain) - 2 - npad
    if end < 0 or plain[end:-2] != bytes(range(1, npad + 1)):
        raise EspError("rx_malformed", "bad ESP padding")
    return plain[:end], next_header


# --- the anti-replay window --------------------------------------------------------------


@dataclass
class ReplayWindow:
    """RFC 4303 Appendix A: ``top`` is the highest authenticated sequence number."""

    size: int
    esn: bool
    top: int = 0
    bitmap: int = 0  # bit k: top - k was received

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ReplayWindow:
        size = int(record.get("replay_window") or DEFAULT_REPLAY_WINDOW)
        top = int(record.get("seq", 0))
        hexmap = record.get("replay_bitmap")
        # No bitmap replicated: take everything up to top as received.
        full = (1 << size) - 1 if top else 0
        bitmap = int(hexmap, 16) if hexmap else full
        return cls(size, bool(record.get("esn")), top, bitmap & ((1 << size) - 1))

    def bitmap_hex(self) -> str:
        return self.bitmap.to_bytes((self.size + 7) // 8, "big").hex()

    def infer(self, seq_lo: int) -> int:
        """The full sequence number of a header's low 32 bits (A2.2), or EspError if replayed."""
        if not self.esn:
            full = seq_lo
            if full == 0:
                raise EspError("rx_replay", "sequence number 0 is never sent")
        else:
            w, tl, th = self.size, self.top & U32, self.top >> 32
            if tl >= w - 1:
                hi = th if seq_lo >= tl - w + 1 else th + 1
            else:
                hi = th - 1 if seq_lo >= (tl - w + 1) % 2**32 else th
            if hi < 0 or hi > U32:
                raise EspError("rx_replay", "sequence number outside the window")
            full = hi << 32 | seq_lo
        if full <= self.top:
            behind = self.top - full
            if behind >= self.size:
                raise EspError("rx_replay", "sequence number left of the window")
            if self.bitmap >> behind & 1:
                raise EspError("rx_replay", "sequence number already received")
        return full

    def accept(self, full: int) -> None:
        """Mark an authenticated packet received (A2.3: only after the ICV check)."""
        if full > self.top:
            shift = full - self.top
            mask = (1 << self.size) - 1
            self.bitmap = ((self.bitmap << shift) | 1) & mask if shift < self.size else 1
            self.top = full
        else:
            self.bitmap |= 1 << (self.top - full)


# --- SAs ------------------------------------------------------------------------------


@dataclass
class Counters:
    """What is reported back to hasyncd for one SA: totals, never going backwards."""

    bytes: int = 0
    packets: int = 0
    dirty: bool = False


@dataclass(repr=False)
class OutboundSa:
    """``seq`` is the last sequence number sent; ``limit`` the highest one it may send."""

    id: str
    spi: int
    esn: bool
    xf: Transform
    dest: tuple[str, int]
    seq: int
    limit: int
    counters: Counters = field(default_factory=Counters)

    def __repr__(self) -> str:
        return f"OutboundSa({self.id}, seq={self.seq}, limit={self.limit})"

    def seal(self, payload: bytes, next_header: int) -> bytes:
        """One ESP packet with the next sequence number; EspError when none may be used."""
        if self.seq >= self.limit:
            code = "tx_seq_exhausted" if self.limit >= (U64 if self.esn else U32) else "tx_no_lease"
            raise EspError(code, f"no sequence number left below {self.limit}")
        seq = self.seq + 1
        header = ESP_HEADER.pack(self.spi, seq & U32)
        body = self.xf.seal(header, seq, self.esn, pad(payload, next_header, self.xf.block))
        self.seq = seq
        self.counters.bytes += len(payload)
        self.counters.packets += 1
        self.counters.dirty = True
        return header + body


@dataclass(repr=False)
class InboundSa:
    id: str
    spi: int
    xf: Transform
    window: ReplayWindow
    counters: Counters = field(default_factory=Counters)

    def __repr__(self) -> str:
        return f"InboundSa({self.id}, top={self.window.top})"

    def open(self, packet: bytes) -> tuple[bytes, int]:
        """(payload, next header) of an authentic, fresh packet; EspError otherwise."""
        xf = self.xf
        if len(packet) < ESP_HEADER.size + xf.iv_len + xf.icv_len + xf.block:
            raise EspError("rx_malformed", "ESP packet too short")
        header = packet[: ESP_HEADER.size]
        _, seq_lo = ESP_HEADER.unpack(header)
        full = self.window.infer(seq_lo)  # before the ICV: cheap rejection first
        plain = xf.open(header, full, self.window.esn, packet[ESP_HEADER.size :])
        payload, next_header = unpad(plain)
        self.window.accept(full)
        self.counters.bytes += len(payload)
        self.counters.packets += 1
        self.counters.dirty = True
        return payload, next_header


def outbound(rid: str, record: dict[str, Any], dest: tuple[str, int]) -> OutboundSa:
    """An outbound SA continuing after the record's ``seq``; it may send up to 2^32-1/2^64-1."""
    esn = bool(record.get("esn"))
    sa = OutboundSa(
        rid,
        int(record["spi"]),
        esn,
        transform(record),
        dest,
        int(record["seq"]),
        U64 if esn else U32,
    )
    sa.counters = Counters(int(record.get("bytes", 0)), int(record.get("packets", 0)))
    return sa


def inbound(rid: str, record: dict[str, Any]) -> InboundSa:
    sa = InboundSa(rid, int(record["spi"]), transform(record), ReplayWindow.from_record(record))
    sa.counters = Counters(int(record.get("bytes", 0)), int(record.get("packets", 0)))
    return sa


def spi_of(packet: bytes) -> int:
    if len(packet) < ESP_HEADER.size:
        raise EspError("rx_malformed", "shorter than an ESP header")
    return int(ESP_HEADER.unpack_from(packet)[0])
