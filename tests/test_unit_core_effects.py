"""The node core is the only object that emits events and applies effects (issue 9).

The roles and the primary's duties read the node through a narrow Protocol
and queue what they decide (``hasyncd.core.effects``); ``NodeCore`` applies
the queue after each call into them.  Two checks pin it: one reads the
source (no sub-machine calls a side-effecting method of the node), one
drives a ``RoleManager`` through a promotion on a fake node that has no
method a sub-machine could change it with.
"""

from __future__ import annotations

import ast
import inspect
import random
from pathlib import Path

import pytest

from hasyncd.core.effects import (
    PUMP,
    Count,
    Effects,
    ResetReplication,
    WriteRecord,
)
from hasyncd.core.events import PromotionDone, RoleChanged
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.node import NodeCore
from hasyncd.core.peers import Peer
from hasyncd.core.primary import PrimaryDuties
from hasyncd.core.roles import RoleManager
from hasyncd.core.seqview import PROMO, History
from hasyncd.core.settings import CoreSettings
from hasyncd.secret import Secret
from hasyncd.store import Store, pack_version
from hasyncd.wire.messages import Message, Role

CORE = Path(__file__).resolve().parent.parent / "hasyncd" / "core"
CORE_PKG = "hasyncd.core."

# The node core's own modules, the only ones that apply effects: those of
# NodeCore's layers (node, connections, streams, writes, nodebase, outputs),
# and ``counterpath``, the node's counter-write functions.
NODE_MODULES = {
    Path(inspect.getfile(c)).name for c in NodeCore.__mro__ if c.__module__.startswith(CORE_PKG)
} | {"counterpath.py"}
# What changes the node (its outputs, links, store, backlog or split-brain record).
SIDE_EFFECTS = {
    "emit",
    "count",
    "close",
    "local_write",
    "log_limited",
    "note_split",
    "request_pump",
    "abort_resync",
    "begin_resync",
    "end_resync",
    "put_value",
    "offered",
    "detected",
    "merged",
}


def calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, receiver, method) of every ``receiver.method(...)`` call in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            out.append((node.lineno, ast.unparse(node.func.value), node.func.attr))
    return out


def test_only_the_node_emits_events() -> None:
    assert {"node.py", "outputs.py"} <= NODE_MODULES
    found = [
        f"{p.name}:{line}: {recv}.emit("
        for p in sorted(CORE.glob("*.py"))
        if p.name not in NODE_MODULES
        for line, recv, attr in calls(p)
        if attr == "emit"
    ]
    assert found == []


def test_the_roles_and_duties_change_the_node_only_through_their_effects() -> None:
    # The modules of RoleManager's layers, and the primary's duties.
    classes = [*RoleManager.__mro__, PrimaryDuties]
    modules = sorted(
        {Path(inspect.getfile(c)) for c in classes if c.__module__.startswith(CORE_PKG)}
    )
    assert {p.name for p in modules} >= {"roles.py", "rolechanges.py", "primary.py"}
    found = [
        f"{p.name}:{line}: {recv}.{attr}("
        for p in modules
        for line, recv, attr in calls(p)
        if attr in SIDE_EFFECTS and recv != "self.out"
    ]
    assert found == []
    # and what they read of the node is reached only through ``self.core``/``core``
    reads = {
        f"{recv}.{attr}"
        for p in modules
        for _, recv, attr in calls(p)
        if recv == "core" or recv.startswith(("core.", "self.core"))
    }
    assert reads <= {
        "self.core.now_ms",
        "self.core.peer_by_tag",
        "self.core.send",  # the duties' HANDOVER (its result says whether it went out)
        "self.core.peers.get",
        "self.core.peers.values",
        "self.core.store.counts",
        "self.core.store.counts().values",
        "core.store.counts",
        "core.store.counts().values",
        "core.peers.values",
    }, reads


class ReadOnlyNode:
    """What the roles read of a node; nothing here can change it."""

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}
        self.store = Store()
        self.promotions = History(self.store)
        self.started = 0.0
        self.wall = 1_800_000_000.0
        self.sent: list[Message] = []

    @property
    def last_heartbeat_sent(self) -> float:
        return 0.0

    def now_ms(self, now: float) -> int:
        return int(now * 1000)

    def peer_by_tag(self, tag: int) -> Peer | None:
        return None

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None:
        self.sent.append(msg)
        return None


def test_a_lone_node_promotes_by_queuing_effects_and_changes_nothing_of_the_node() -> None:
    settings = CoreSettings(name="a", tag=1, priority=100, group_id=1, psk=Secret(bytes(32)))
    node = ReadOnlyNode()
    gov = RekeyGovernor(settings.rekey_rate, settings.rekey_jitter, random.Random(1))
    roles = RoleManager(node, settings, 0.0, gov)
    roles.evaluate(settings.holddown - 0.001)  # within the hello hold-down: nothing
    assert roles.role is Role.STARTING and roles.out.take() == []
    roles.evaluate(settings.holddown)
    assert roles.role is Role.PRIMARY and roles.in_sync and roles.announce
    effects = roles.out.take()
    base = pack_version(roles.epoch, 0)
    [write] = [e for e in effects if isinstance(e, WriteRecord)]
    assert (write.kind, write.quiet) == (PROMO, True)
    kinds = [type(e) for e in effects]
    # the backlog restarts before the promotion record is written into it
    assert kinds.index(ResetReplication) < kinds.index(WriteRecord)
    assert ResetReplication(base) in effects
    assert Count("promotions") in effects
    assert [e.new for e in effects if isinstance(e, RoleChanged)] == ["primary"]
    assert [e.epoch for e in effects if isinstance(e, PromotionDone)] == [roles.epoch]
    # The node was only read: the promotion record is the node's to write.
    assert len(node.store) == 0 and roles.seq == 0 and node.sent == []


def test_the_effects_queue_takes_in_order_and_checks_counter_names() -> None:
    out = Effects()
    out.count("promotions")
    out.request_pump()
    out.count("rekey_released", "", 3)
    assert out.take() == [Count("promotions"), PUMP, Count("rekey_released", "", 3)]
    assert out.take() == []
    with pytest.raises(AssertionError, match="undeclared counter"):
        out.count("no_such_counter")
