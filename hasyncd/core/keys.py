"""The node's link keys during a PSK rotation: which key to dial with, which link to keep.

A node holds its cluster key (``[link].psk_file``) and optionally the next one
(``[link].psk_next_file``).  It accepts links under either and *prefers* the
next one (PROTOCOL.md section 5.2.1):

* an initiator dials with the next key, unless that peer address refused it
  with ``psk_mismatch`` less than ``REKEY_RETRY`` ago: then it dials at once
  with the current key, so a peer that has not got the next key yet never
  loses its link;
* a link under a key that is not the preferred one is re-established under
  the preferred one, make-before-break: the new link is dialed while the old
  one carries traffic, and the one-link rule keeps the link under the
  preferred key (``prefers_new_link``);
* a link under a key the node no longer holds (retired by a reload) is closed.

Key ids only, never keys, leave this module (status, logs).
"""

from __future__ import annotations

from dataclasses import dataclass

from hasyncd.secret import Secret
from hasyncd.wire.handshake import key_id

# How long a peer address's psk_mismatch refusal of the next key is believed,
# and how often a link under a non-preferred key retries the preferred one.
# A REJECT is unauthenticated, so the belief must expire (a forged one must not
# pin the link to the old key forever); once a minute keeps the peer's log at
# its one-line-a-minute rate limit for refused handshakes (PROTOCOL.md 5.10).
REKEY_RETRY = 60.0


@dataclass(frozen=True)
class Keyring:
    current: Secret
    next: Secret | None = None

    @classmethod
    def of(cls, current: Secret, nxt: Secret | None) -> Keyring:
        # The same key in both files (an operator mid-way through promoting) is one key.
        return cls(current, None if nxt is None or nxt == current else nxt)

    @property
    def preferred(self) -> Secret:
        return self.next if self.next is not None else self.current

    @property
    def preferred_id(self) -> bytes:
        return key_id(self.preferred.reveal())

    @property
    def current_id(self) -> bytes:
        return key_id(self.current.reveal())

    @property
    def next_id(self) -> bytes | None:
        return key_id(self.next.reveal()) if self.next is not None else None

    @property
    def others(self) -> tuple[Secret, ...]:
        """The keys a responder accepts besides the preferred one."""
        return (self.current,) if self.next is not None else ()

    def holds(self, kid: bytes | None) -> bool:
        return kid is not None and kid in (self.current_id, self.next_id)

    def name_of(self, kid: bytes | None) -> str | None:
        """``"current"``, ``"next"``, or None for a key this node does not hold."""
        if kid is None:
            return None
        if kid == self.next_id:
            return "next"
        return "current" if kid == self.current_id else None

    def dial_key(self, refused: bytes | None, refused_at: float, now: float) -> Secret:
        """The key to dial an address with, given the key id it last refused and when."""
        if self.next is not None and refused == self.next_id and now < refused_at + REKEY_RETRY:
            return self.current
        return self.preferred

    def ids(self) -> dict[str, str | None]:
        nid = self.next_id
        return {"current": self.current_id.hex(), "next": nid.hex() if nid is not None else None}


def prefers_new_link(keys: Keyring, old_kid: bytes | None, new_kid: bytes | None) -> bool | None:
    """Of two links to one peer, True/False if exactly one is under the preferred key.

    None when key choice does not decide (both or neither under the preferred
    key): the usual one-link rule then applies.  Both nodes of a rotation
    prefer the same key (the next one once both hold it), so both keep the
    same link.
    """
    want = keys.preferred_id
    old_ok, new_ok = old_kid == want, new_kid == want
    if old_ok == new_ok:
        return None
    return new_ok
