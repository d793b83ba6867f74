"""The message handler table: which message is legal when, and what happens to the others.

As aioquic's ``QuicConnection.__frame_handlers``: one entry per message
(``message_key``), with its handler and the one predicate that says whether
the message is legal in the node's current state.  ``NodeCore._dispatch``
looks the entry up, applies the epoch rule, asks the predicate, and either
runs the handler or refuses.

Outcomes:

* **legal**: the handler runs; an ack-eliciting message is acknowledged.
* **refused**: legal on the wire, not now (we are not primary, not
  following that peer, an older epoch): counted as ``refused{label}`` with
  the label the predicate names, never applied and never acknowledged (the
  sender retries or gives up); the link stays up.
* **closed**: a message with no entry (HELLO after the handshake), or one a
  handler finds out of order (``UnexpectedMessage`` from the follower):
  a protocol error, counted by ``link_errors`` and the link closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hasyncd.core.peers import Conn, Peer
from hasyncd.wire.messages import Message, Phase, Records

# Why a legal-on-the-wire message is refused now: a ``refused`` counter label
# (declared in hasyncd.core.counters), or None when it is legal.
Refusal = Callable[[Peer, int, Message], str | None]
Handle = Callable[[Conn, Peer, int, Message, float], None]

MERGE_RECORDS = "merge_records"  # RECORDS in the merge phase go to the survivor's merge


def message_key(msg: Message) -> type[Message] | str:
    """The table key: the message type, RECORDS split by who takes them."""
    if isinstance(msg, Records) and msg.phase is Phase.MERGE:
        return MERGE_RECORDS
    return type(msg)


@dataclass(frozen=True, slots=True)
class Handler:
    handle: Handle
    refusal: Refusal | None = None  # None: legal in every state
    observes_epoch: bool = True  # False: the handler applies the epoch rule itself (HEARTBEAT)
