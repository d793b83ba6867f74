"""Epochs: ``term << 16 | tag``, and the rule a promoting node mints the next one by.

The minting node's tag is part of every epoch, so two nodes that promote
concurrently (both sides of a partition) mint different epochs, every version
names the node that minted it, and "the higher epoch wins" never ties.
PROTOCOL.md section 9.2 is the normative text; ``proto/vectors/epochs.json``
pins examples.
"""

from __future__ import annotations

TAG_BITS = 16
TAG_MASK = (1 << TAG_BITS) - 1
TERMS_PER_SECOND = 10


def next_epoch(current: int, tag: int, wall: float) -> int:
    """The epoch a node with ``tag`` mints when it promotes: a higher term, its own tag.

    The term is at least the wall clock in tenths of a second: a node
    remembers nothing across a restart, and without this it would mint its
    first epoch again, and with it versions that collide with writes of its
    earlier life.  Tenths keep a restarted node clear of its earlier terms
    unless it promoted several times within the last few tenths, and keep
    epochs below 2^53 (exact in JSON for JavaScript clients) until the 2400s.
    """
    term = max((current >> TAG_BITS) + 1, int(wall * TERMS_PER_SECOND))
    return (term << TAG_BITS) | tag


def minter(epoch: int) -> int:
    """The tag of the node that minted ``epoch``."""
    return epoch & TAG_MASK
