"""Noise_NNpsk0_25519_ChaChaPoly_SHA256, the one handshake pattern hasyncd uses.

NNpsk0 (Noise revision 34, section 9) gives both sides mutual authentication
from the cluster's pre-shared key plus forward secrecy from two ephemeral
X25519 keys, and binds everything sent into the handshake hash ``h``:

    -> psk, e          (initiator: PSK mixed in first, then its ephemeral key)
    <- e, ee           (responder: its ephemeral key, then the shared secret)

This module implements the Noise state objects exactly as specified so that
any conforming Noise library interoperates (``tests/test_noise.py`` checks it
against the ``noiseprotocol`` package).  It knows nothing about hasyncd's
framing; ``hasyncd.wire.handshake`` wraps it.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hasyncd.errors import DecryptFailed, HandshakeError

PROTOCOL_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
HASHLEN = 32
DHLEN = 32
KEYLEN = 32
TAGLEN = 16
# Noise reserves nonce 2**64-1; a link would need 2**64 frames to get there.
MAX_NONCE = 2**64 - 2


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise's HKDF: HMAC-SHA256 extract, then 2 or 3 chained expand blocks."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _nonce(n: int) -> bytes:
    # ChaChaPoly in Noise: 32 zero bits followed by the 64-bit little-endian counter.
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """One direction's AEAD key and its implicit counter nonce.

    The counter only advances on success; callers close the link on any
    failure, so a replayed, reordered, truncated or tampered frame can never
    be accepted later either.
    """

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    def __repr__(self) -> str:  # never show key material
        return f"CipherState(keyed={self._aead is not None}, n={self.n})"

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n > MAX_NONCE:
            raise DecryptFailed("nonce space exhausted")
        out = self._aead.encrypt(_nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n > MAX_NONCE:
            raise DecryptFailed("nonce space exhausted")
        try:
            out = self._aead.decrypt(_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise DecryptFailed(f"authentication tag mismatch on frame {self.n}") from None
        self.n += 1
        return out


class SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self) -> None:
        self.h = PROTOCOL_NAME if len(PROTOCOL_NAME) == HASHLEN else _hash(PROTOCOL_NAME)
        if len(self.h) < HASHLEN:  # pragma: no cover - our name is longer than HASHLEN
            self.h = self.h.ljust(HASHLEN, b"\x00")
        self.ck = self.h
        self.cipher = CipherState()

    def __repr__(self) -> str:
        return "SymmetricState(<redacted>)"

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1[:KEYLEN]), CipherState(k2[:KEYLEN])


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class NNpsk0:
    """The two-message NNpsk0 handshake for one side of one connection.

    ``ephemeral`` may be injected for reproducible test vectors; otherwise a
    fresh X25519 key is generated, which is what gives forward secrecy.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        psk: bytes,
        prologue: bytes,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if len(psk) != 32:
            raise ValueError("Noise PSKs are exactly 32 bytes")
        self.initiator = initiator
        self._psk = psk
        self._e = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._step = 0

    def __repr__(self) -> str:
        return f"NNpsk0(initiator={self.initiator}, step={self._step})"

    @property
    def handshake_hash(self) -> bytes:
        """``h`` after the handshake: a transcript digest both sides agree on."""
        return self._ss.h

    def _mix_e(self, public: bytes) -> None:
        # With a psk modifier the ephemeral key is also mixed into the key.
        self._ss.mix_hash(public)
        self._ss.mix_key(public)

    def write_message_1(self, payload: bytes) -> bytes:
        assert self.initiator and self._step == 0
        self._ss.mix_key_and_hash(self._psk)
        e_pub = _public_bytes(self._e)
        self._mix_e(e_pub)
        self._step = 1
        return e_pub + self._ss.encrypt_and_hash(payload)

    def read_message_1(self, message: bytes) -> bytes:
        assert not self.initiator and self._step == 0
        if len(message) < DHLEN + TAGLEN:
            raise HandshakeError("malformed", "handshake message 1 is too short")
        self._ss.mix_key_and_hash(self._psk)
        self._re = message[:DHLEN]
        self._mix_e(self._re)
        self._step = 1
        return self._ss.decrypt_and_hash(message[DHLEN:])

    def write_message_2(self, payload: bytes) -> tuple[bytes, CipherState, CipherState]:
        """Returns message 2 and the (send, receive) cipher states."""
        assert not self.initiator and self._step == 1
        e_pub = _public_bytes(self._e)
        self._mix_e(e_pub)
        self._ss.mix_key(self._dh(self._re))
        message = e_pub + self._ss.encrypt_and_hash(payload)
        c1, c2 = self._ss.split()
        self._step = 2
        return message, c2, c1

    def read_message_2(self, message: bytes) -> tuple[bytes, CipherState, CipherState]:
        """Returns the payload and the (send, receive) cipher states."""
        assert self.initiator and self._step == 1
        if len(message) < DHLEN + TAGLEN:
            raise HandshakeError("malformed", "handshake message 2 is too short")
        re = message[:DHLEN]
        self._mix_e(re)
        self._ss.mix_key(self._dh(re))
        payload = self._ss.decrypt_and_hash(message[DHLEN:])
        c1, c2 = self._ss.split()
        self._step = 2
        return payload, c1, c2

    def _dh(self, public: bytes) -> bytes:
        try:
            return self._e.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            # All-zero shared secret: a low-order point, never sent by an honest peer.
            raise HandshakeError("auth_failed", "peer sent an invalid ephemeral key") from None
