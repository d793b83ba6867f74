"""A deterministic simulator: many node cores, one simulated clock, a faulty network.

The simulator plays the asyncio shell for every node: it delivers bytes with
a latency, opens and refuses connections, arms each node's timer and lets a
test (or a seeded fault campaign) kill, freeze, restart and partition nodes.
Everything runs in one thread on a simulated clock, so a run with the same
seed and the same schedule always produces the same result.

Model:

* a connection is a pair of byte pipes with per-direction FIFO delivery
  (TCP); while its two nodes are partitioned the bytes are held, like TCP
  retransmitting, and arrive in order after the heal;
* a dial to a dead node's address is refused after one latency; a dial
  across a partition times out after ``connect_timeout``;
* a killed node's connections are reset; a frozen node (SIGSTOP) handles
  nothing, and on thaw handles buffered input before its late timer, as an
  asyncio loop does;
* ``flood`` plays an attacker without the key: it holds raw connections to a
  node's link port, sending nothing or a fixed prefix, and reconnects each
  one as soon as the node closes it (or refuses it while the node is down).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hasyncd.core.events import Close, Dial, Event, RoleChanged
from hasyncd.core.node import NodeCore
from hasyncd.core.settings import CoreSettings
from hasyncd.errors import WriteRefused
from hasyncd.records import KINDS_BY_CODE, Record
from hasyncd.secret import Secret
from hasyncd.store import Store
from hasyncd.wire.messages import Role

WALL_BASE = 1_700_000_000.0
# Events at one instant beyond which the simulation is stuck (a timer that
# keeps asking to run "now" without making progress is a bug in a core).
LIVELOCK = 200_000


@dataclass
class _Pipe:
    """One direction of a connection."""

    src: str
    dst: str
    dst_conn: int
    held: list[bytes] = field(default_factory=list)
    next_free: float = 0.0  # FIFO: nothing is delivered before the previous chunk


@dataclass
class _Flood:
    """An attacker's raw connections to one node (see ``Sim.flood``)."""

    target: str
    host: str
    payloads: tuple[bytes, ...]
    until: float
    connects: int = 0


@dataclass
class SimNode:
    name: str
    settings: CoreSettings
    core: NodeCore
    alive: bool = True
    frozen: bool = False
    timer_gen: int = 0
    transmit_due: bool = False  # a transmit is scheduled for this instant (coalesced)
    due: float | None = None  # the core's last next_timer(): its timer's deadline

    def take_due(self) -> float | None:
        """The deadline the running timer was armed for, once (as the shell passes it)."""
        due, self.due = self.due, None
        return due

    frozen_inbox: list[Callable[[], None]] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)

    @property
    def role(self) -> Role:
        return self.core.roles.role

    @property
    def address(self) -> str:
        return f"sim:{self.name}"


class Sim:
    def __init__(self, seed: int = 0, latency: float = 0.0002, jitter: float = 0.0001) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = 0.0
        self.latency = latency
        self.jitter = jitter
        self.connect_timeout = 1.0
        self.nodes: dict[str, SimNode] = {}
        self.psk = Secret(bytes(range(32)))
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._conn_ids = itertools.count(1)
        self._pipes: dict[tuple[str, int], _Pipe] = {}  # (node, local conn) -> outgoing pipe
        self._blocked: set[frozenset[str]] = set()
        self._pending_rst: list[tuple[str, int]] = []
        self._raw: dict[tuple[str, int], _Flood] = {}  # (node, conn) -> the flood it belongs to
        self.log: list[tuple[float, str, str]] = []

    # -- building -----------------------------------------------------------------

    @property
    def wall(self) -> float:
        """The simulated Unix time: every node's ``wall`` input, ``now`` after WALL_BASE."""
        return WALL_BASE + self.now

    def settings(self, name: str, peers: list[str], **kw: Any) -> CoreSettings:
        base: dict[str, Any] = {
            "name": name,
            "tag": 1 + sum(name.encode()) % 60000,
            "priority": 100,
            "group_id": 1,
            "psk": self.psk,
            "peers": tuple(f"sim:{p}" for p in peers if p != name),
            "listen": f"sim:{name}",
            "holddown": 1.0,
        }
        base.update(kw)
        return CoreSettings(**base)

    def add(self, name: str, peers: list[str], **kw: Any) -> SimNode:
        settings = self.settings(name, peers, **kw)
        node = SimNode(name, settings, self._new_core(settings))
        self.nodes[name] = node
        self._after(node)
        return node

    def cluster(self, names: list[str], **kw: Any) -> list[SimNode]:
        return [self.add(n, names, **kw) for n in names]

    def _new_core(self, settings: CoreSettings) -> NodeCore:
        return NodeCore(
            settings,
            Store(),
            now=self.now,
            wall=self.wall,
            boot_id=self.rng.randbytes(16),
            rng=random.Random(self.rng.random()),
        )

    # -- the event queue ---------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), fn))

    def run_until(self, t: float) -> None:
        same = 0
        while self._queue and self._queue[0][0] <= t:
            same = same + 1 if self._queue[0][0] <= self.now else 0
            if same > LIVELOCK:
                raise RuntimeError(
                    f"livelock: {LIVELOCK} events at t={self.now} (seed {self.seed})"
                )
            self._step()
        self.now = max(self.now, t)

    def _step(self) -> None:
        when, _, fn = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        fn()

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(
        self, cond: Callable[[], bool], limit: float = 30.0, step: float = 0.01
    ) -> float:
        """Run until ``cond()`` holds; returns the time it took.  Raises on timeout.

        ``step=0`` checks the condition after every single event.
        """
        start = self.now
        while not cond():
            if self.now - start > limit:
                raise TimeoutError(f"condition not met within {limit} s (seed {self.seed})")
            if step > 0:
                self.run_for(step)
            elif self._queue:
                self._step()
            else:
                self.now += limit
        return self.now - start

    def _delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    # -- driving a node ---------------------------------------------------------------

    def _input(self, node: SimNode, fn: Callable[[], None]) -> None:
        """Deliver an input to a node (buffered while frozen, dropped when dead)."""
        if not node.alive:
            return
        if node.frozen:
            node.frozen_inbox.append(fn)
            return
        fn()
        self._after(node)

    def _after(self, node: SimNode) -> None:
        core = node.core
        for conn_id, data in core.data_to_send():
            self._send(node, conn_id, data)
        for ev in core.events():
            node.events.append((self.now, ev))
            if isinstance(ev, Dial):
                self._dial(node, ev.address)
            elif isinstance(ev, Close):
                self._close(node, ev.conn_id)
            elif isinstance(ev, RoleChanged):
                self.log.append(
                    (self.now, node.name, f"{ev.old}->{ev.new} e{ev.epoch}: {ev.reason}")
                )
        node.timer_gen += 1
        gen = node.timer_gen
        node.due = core.next_timer()
        when = max(node.due, self.now)
        self.at(when, lambda: self._timer(node, gen))
        if core.wants_transmit and not node.transmit_due:
            node.transmit_due = True  # the shell's call_soon: once for what this instant queued
            self.at(self.now, lambda: self._transmit(node))

    def _transmit(self, node: SimNode) -> None:
        node.transmit_due = False
        if not node.alive or node.frozen:
            return  # a frozen node sends nothing; thaw runs its timer (and pump)
        node.core.transmit(self.now, wall=self.wall)
        self._after(node)

    def _timer(self, node: SimNode, gen: int) -> None:
        if gen != node.timer_gen or not node.alive:
            return
        if node.frozen:
            node.frozen_inbox.append(
                lambda: node.core.handle_timer(self.now, node.take_due(), wall=self.wall)
            )
            return
        node.core.handle_timer(self.now, node.take_due(), wall=self.wall)
        self._after(node)

    # -- connections -------------------------------------------------------------------

    def _blocked_between(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._blocked

    def _dial(self, node: SimNode, address: str) -> None:
        target = self.nodes.get(address.removeprefix("sim:"))
        if target is None or self._blocked_between(node.name, target.name):
            self.at(
                self.now + self.connect_timeout,
                lambda: self._input(
                    node,
                    lambda: node.core.connect_failed(
                        address, self.now, "connect timed out", wall=self.wall
                    ),
                ),
            )
            return
        if not target.alive:
            self.at(
                self.now + self._delay(),
                lambda: self._input(
                    node,
                    lambda: node.core.connect_failed(
                        address, self.now, "connection refused", wall=self.wall
                    ),
                ),
            )
            return
        a_id, b_id = next(self._conn_ids), next(self._conn_ids)
        self._pipes[(node.name, a_id)] = _Pipe(node.name, target.name, b_id)
        self._pipes[(target.name, b_id)] = _Pipe(target.name, node.name, a_id)
        t = self.now + self._delay()
        self.at(
            t,
            lambda: self._input(
                target,
                lambda: target.core.connection_made(
                    b_id,
                    initiator=False,
                    address=f"sim:{node.name}:peer",
                    now=self.now,
                    wall=self.wall,
                ),
            ),
        )
        self.at(
            t + self._delay(),
            lambda: self._input(
                node,
                lambda: node.core.connection_made(
                    a_id, initiator=True, address=address, now=self.now, wall=self.wall
                ),
            ),
        )

    def _send(self, node: SimNode, conn_id: int, data: bytes) -> None:
        pipe = self._pipes.get((node.name, conn_id))
        if pipe is None:
            return
        if self._blocked_between(pipe.src, pipe.dst):
            pipe.held.append(data)
            return
        self._deliver(pipe, data)

    def _deliver(self, pipe: _Pipe, data: bytes) -> None:
        t = max(self.now + self._delay(), pipe.next_free)
        pipe.next_free = t
        dst = self.nodes[pipe.dst]

        def arrive() -> None:
            if (pipe.dst, pipe.dst_conn) in self._pipes:
                dst.core.receive_data(pipe.dst_conn, data, self.now, wall=self.wall)

        self.at(t, lambda: self._input(dst, arrive))

    def _close(self, node: SimNode, conn_id: int) -> None:
        flood = self._raw.pop((node.name, conn_id), None)
        if flood is not None:
            # The attacker sees the FIN after one latency and reconnects at once.
            self.at(self.now + self._delay(), lambda: self._raw_connect(flood))
            return
        pipe = self._pipes.pop((node.name, conn_id), None)
        if pipe is None:
            return
        # Flush what is held if the path is open; the peer then sees the FIN.
        dst = self.nodes[pipe.dst]
        if not self._blocked_between(pipe.src, pipe.dst):
            for data in pipe.held:
                self._deliver(pipe, data)
            pipe.held.clear()
            t = max(self.now + self._delay(), pipe.next_free)
            self.at(t, lambda: self._peer_closed(dst, pipe.dst_conn))
        else:
            # The FIN is lost in the partition; the peer notices at the heal (RST).
            pipe.held = []
            self._pending_rst.append((dst.name, pipe.dst_conn))

    def _schedule_closed(self, node: SimNode, conn_id: int) -> None:
        self.at(self.now + self._delay(), lambda: self._peer_closed(node, conn_id))

    def _peer_closed(self, node: SimNode, conn_id: int) -> None:
        if self._pipes.pop((node.name, conn_id), None) is None:
            return
        self._input(node, lambda: node.core.connection_lost(conn_id, self.now, wall=self.wall))

    # -- faults ---------------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        self._blocked.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        self._blocked.discard(frozenset((a, b)))
        for pipe in list(self._pipes.values()):
            if {pipe.src, pipe.dst} == {a, b} and pipe.held:
                held, pipe.held = pipe.held, []
                for data in held:
                    self._deliver(pipe, data)
        rst, self._pending_rst = self._pending_rst, []
        for name, cid in rst:
            back = self._pipes.get((name, cid))
            if back is not None and {back.src, back.dst} == {a, b}:
                self._schedule_closed(self.nodes[name], cid)
            else:
                self._pending_rst.append((name, cid))

    def isolate(self, name: str) -> None:
        for other in self.nodes:
            if other != name:
                self.partition(name, other)

    def rejoin(self, name: str) -> None:
        for other in self.nodes:
            if other != name:
                self.heal(name, other)

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.alive = False
        node.timer_gen += 1
        for key, flood in list(self._raw.items()):
            if key[0] == name:
                del self._raw[key]
                self.at(self.now + self._delay(), functools.partial(self._raw_connect, flood))
        for (owner, cid), pipe in list(self._pipes.items()):
            if owner != name:
                continue
            del self._pipes[(owner, cid)]
            dst = self.nodes[pipe.dst]
            if self._blocked_between(pipe.src, pipe.dst):
                self._pending_rst.append((dst.name, pipe.dst_conn))
            else:
                self._schedule_closed(dst, pipe.dst_conn)

    def restart(self, name: str, **kw: Any) -> SimNode:
        old = self.nodes[name]
        if old.alive:
            self.kill(name)
        settings = (
            old.settings
            if not kw
            else self.settings(name, [p.removeprefix("sim:") for p in old.settings.peers], **kw)
        )
        node = SimNode(name, settings, self._new_core(settings))
        self.nodes[name] = node
        self._after(node)
        return node

    def freeze(self, name: str) -> None:
        self.nodes[name].frozen = True

    def thaw(self, name: str) -> None:
        node = self.nodes[name]
        node.frozen = False
        inbox, node.frozen_inbox = node.frozen_inbox, []
        # asyncio runs ready I/O callbacks before expired timers: deliver input first.
        for fn in inbox:
            fn()
        node.core.handle_timer(self.now, node.take_due(), wall=self.wall)
        self._after(node)

    # -- an attacker without the key -----------------------------------------------------

    def flood(
        self, target: str, n: int, *, host: str, payloads: tuple[bytes, ...], seconds: float
    ) -> _Flood:
        """Hold ``n`` raw connections to ``target`` from ``host`` for ``seconds``.

        The k-th connection made sends ``payloads[k % len(payloads)]`` once
        connected (``b""``: nothing).  A closed or refused one is reopened at once.
        """
        flood = _Flood(target, host, payloads, self.now + seconds)
        for _ in range(n):
            self._raw_connect(flood)
        return flood

    def _raw_connect(self, flood: _Flood) -> None:
        if self.now >= flood.until:
            return
        node = self.nodes[flood.target]
        if not node.alive:  # refused: try again after the RST
            self.at(self.now + self._delay(), lambda: self._raw_connect(flood))
            return
        payload = flood.payloads[flood.connects % len(flood.payloads)]
        flood.connects += 1
        conn_id = next(self._conn_ids)
        address = f"{flood.host}:raw{conn_id}"

        def made() -> None:
            self._raw[(node.name, conn_id)] = flood
            node.core.connection_made(
                conn_id, initiator=False, address=address, now=self.now, wall=self.wall
            )

        def data() -> None:
            if self._raw.get((node.name, conn_id)) is flood:
                node.core.receive_data(conn_id, payload, self.now, wall=self.wall)

        t = self.now + self._delay()
        self.at(t, lambda: self._input(node, made) if node.alive else self._raw_connect(flood))
        if payload:
            self.at(t + self._delay(), lambda: self._input(node, data))

    # -- operations ----------------------------------------------------------------------

    def write(self, name: str, kind: int, rid: str, content: Record | bytes | None) -> int | None:
        """A local API write on ``name``; returns the version, None for a missing delete.

        ``content`` is a validated Record, a blob (validated here exactly like
        one from the link: the simulator cannot store what the API refuses) or
        None for a delete.
        """
        node = self.nodes[name]
        assert node.alive and not node.frozen
        if content is None:
            result = node.core.delete(kind, rid, self.now, wall=self.wall)
        else:
            record = (
                content
                if isinstance(content, Record)
                else KINDS_BY_CODE[kind].from_blob(content, rid)
            )
            result = node.core.write(record, self.now, wall=self.wall)
        self._after(node)
        return None if result is None else result.version

    def try_write(
        self, name: str, kind: int, rid: str, content: Record | bytes | None
    ) -> int | str:
        try:
            v = self.write(name, kind, rid, content)
        except WriteRefused as exc:
            return exc.code
        return v if v is not None else "absent"

    def primaries(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.alive and n.role is Role.PRIMARY]

    def writable_primaries(self) -> list[str]:
        return [
            n.name
            for n in self.nodes.values()
            if n.alive
            and not n.frozen
            and n.role is Role.PRIMARY
            and n.core.roles.fence is None
            and n.core.roles.handover is None
        ]

    def reconfigure(self, name: str, **changes: Any) -> None:
        """A SIGHUP with changed live settings (such as the link keys)."""
        node = self.nodes[name]
        node.settings = dataclasses.replace(node.settings, **changes)
        self.call(name, lambda core: core.reconfigure(node.settings, self.now, wall=self.wall))

    def call(self, name: str, fn: Callable[[NodeCore], Any]) -> Any:
        node = self.nodes[name]
        result = fn(node.core)
        self._after(node)
        return result
