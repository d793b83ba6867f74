"""The wire protocol: framing, the Noise handshake, AEAD and message codecs.

Everything here is pure: bytes in, bytes or dataclasses out.  The normative
description is ``proto/PROTOCOL.md``; ``proto/vectors/`` pins the bytes.
"""
