"""Real processes under an unauthenticated connection flood on their link ports.

An attacker that cannot authenticate keeps the nodes' handshake slots full
(idle connections and connections that sent the start of an INIT frame),
reconnecting at once whenever one is closed.  The configured peers must still
pair: a restarted secondary rejoins as secondary and no second primary appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from typing import Any

import pytest

from hasyncd.core.links import MAX_UNPROVEN
from hasyncd.lab import LabCluster, LabNode
from hasyncd.wire import handshake as hs

from .test_integration_spine import metric

pytestmark = pytest.mark.integration

ATTACK_SECONDS = 10.0


def partial_init() -> bytes:
    """The first bytes of an INIT frame of 200 bytes: a length prefix, magic, version, type."""
    return struct.pack(">I", 200) + hs.MAGIC + bytes((1, hs.HsType.INIT))


class Attacker:
    """Holds ``n`` connections to each target from 127.0.0.1, half idle, half a partial INIT."""

    def __init__(self, targets: list[str], n: int, seconds: float) -> None:
        self.targets = targets
        self.n = n
        self.seconds = seconds
        self.connects = 0
        self.closed_by_node = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(self.seconds + 10)
        assert not self._thread.is_alive(), "attacker did not stop"

    async def _main(self) -> None:
        stop = time.monotonic() + self.seconds
        tasks = [
            asyncio.create_task(self._slot(target, i % 2 == 1, stop))
            for target in self.targets
            for i in range(self.n)
        ]
        await asyncio.gather(*tasks)

    async def _slot(self, target: str, send_partial: bool, stop: float) -> None:
        host, _, port = target.rpartition(":")
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.005)  # the node is down: retry at once, grab its slots first
                continue
            self.connects += 1
            try:
                if send_partial:
                    writer.write(partial_init())
                    await writer.drain()
                left = stop - time.monotonic()
                if left > 0:
                    try:
                        await asyncio.wait_for(reader.read(4096), left)
                        self.closed_by_node += 1
                    except TimeoutError:
                        pass
            except OSError:
                self.closed_by_node += 1
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


class RolePoller:
    """Polls every node's /v1/status and records every moment two primaries were seen."""

    def __init__(self, nodes: list[LabNode]) -> None:
        self.nodes = nodes
        self.samples: list[tuple[float, dict[str, str | None]]] = []
        self.dual: list[tuple[float, dict[str, str | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            roles = {n.name: n.role() if n.running else None for n in self.nodes}
            now = time.monotonic()
            self.samples.append((now, roles))
            if list(roles.values()).count("primary") > 1:
                self.dual.append((now, roles))
            self._stop.wait(0.02)


@pytest.mark.parametrize(
    "conns_per_node",
    [
        24,  # the reported attack: more than the 16 slots nodes had
        MAX_UNPROVEN + 64,  # fills the budget of silent connections, which then churns
    ],
)
def test_a_handshake_flood_does_not_stop_a_restarted_secondary_rejoining(
    make_cluster: Any, conns_per_node: int
) -> None:
    cluster: LabCluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    poller = RolePoller(list(cluster.nodes.values()))
    poller.start()
    attacker = Attacker([primary.link, secondary.link], conns_per_node, ATTACK_SECONDS)
    attack_start = time.monotonic()
    attacker.start()
    rejoined_at: float | None = None
    try:
        time.sleep(1.0)  # the attacker now holds both nodes' slots
        log_before = secondary.log.read_text() if secondary.log.exists() else ""
        secondary.kill()
        time.sleep(0.3)
        secondary.start()

        def rejoined() -> bool:
            st = secondary.status()
            return (
                st is not None
                and st["role"] == "secondary"
                and st["primary"] == primary.name
                and st["in_sync"] is True
            )

        deadline = time.monotonic() + ATTACK_SECONDS + 10
        while rejoined_at is None and time.monotonic() < deadline:
            if rejoined():
                rejoined_at = time.monotonic()
            time.sleep(0.02)
    finally:
        attacker.join()
        poller.stop()
    attack_end = attack_start + ATTACK_SECONDS
    assert not poller.dual, f"two primaries at once ({len(poller.dual)} samples): {poller.dual[:3]}"
    assert rejoined_at is not None, f"the secondary never rejoined: {secondary.status()}"
    assert rejoined_at < attack_end, (
        f"rejoined {rejoined_at - attack_end:.1f} s after the attack ended, not during it"
    )
    assert attacker.connects >= 2 * conns_per_node, "the attacker never held the slots"
    assert poller.samples, "no role samples"
    assert primary.role() == "primary"
    log_after = secondary.log.read_text()[len(log_before) :]
    assert "PROMOTED" not in log_after, log_after[-3000:]
    st = primary.status()
    assert st is not None
    peer = next(p for p in st["peers"] if p["node"] == secondary.name)
    assert peer["link"] == "up" and peer["in_sync"] is True, peer
    evicted = metric(primary, "hasyncd_link_refused_total", reason="handshake_evicted")
    if conns_per_node > MAX_UNPROVEN:
        assert evicted > 0, "the flood never filled the primary's budget"
    assert metric(primary, "hasyncd_link_refused_total", reason="too_many_handshakes") == 0
