"""An ESP flow survives kill -9 of the primary: two real nodes, one endpoint each, a scapy peer.

The peer (scapy's ESP code, not hasyncd's) sends on an AES-GCM (ESN) and an
AES-CBC + HMAC-SHA-256 tunnel to whichever endpoint announced itself active;
each endpoint reflects what it decrypts back through the tunnel's outbound
SA.  Every packet on the wire is recorded on the peer side and checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from hasyncd.contrib import espflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["counters", "leases"])
def test_esp_tunnel_survives_kill9_of_the_primary(make_cluster: Any, mode: str) -> None:
    cluster = make_cluster(
        base={
            "sync": {"mode": "sync", "sync_timeout_ms": 2000},
            # A margin far below what the flow sends between two counter
            # reports: no reuse must come from the counters or the leases.
            "promotion": {"esp_seq_margin": 16},
        }
    )
    # 500 packets/s per tunnel from the peer, as many back: the peer's scapy
    # encryption is what bounds the rate on a loaded machine.  Small leases, so
    # the old primary renews several times before it is killed.
    res = espflow.run(cluster, mode, print, rate=500, lease_block=256)
    print(f"{mode}: {espflow.summary(res)}")
    # before the failover the secondary's endpoint accepted nothing and sent nothing
    assert res.secondary_probe == (10, 10, 0)
    assert res.sent_after > 200, "too little traffic after the failover to prove anything"
    # every packet the peer sent after the failover decrypted and passed the
    # new primary's replay window (a packet the kernel dropped at the socket
    # never reached it, and is counted apart)
    assert res.rejected_after == {}
    assert res.accepted_after + res.kernel_drops_after == res.sent_after
    # replays of what the old primary received: refused up to the replicated
    # inbound seq (bar packets the old primary's socket dropped, never received);
    # above it the window is stale, and the test reports how many got through
    replayed, covered, refused, accepted, old_drops = res.replay
    assert replayed > 200 and refused + accepted == replayed
    assert covered - old_drops <= refused <= covered
    # ... and the new primary answered each packet it accepted through its outbound SA
    assert res.from_gateways.get("fw-b", 0) == res.accepted_after + accepted
    # every packet either gateway sent was recorded, decrypts in scapy and passes the peer's window
    assert res.peer_kernel_drops == 0
    assert res.undecryptable == 0
    assert res.replay_refused == {}
    # no (SPI, sequence number) pair, and so no GCM nonce, was used twice
    assert res.reused == []
    assert res.nonce_reused == 0
    assert res.key_leaks == []  # no SA key in the endpoints' logs or state files
    if mode == "leases":  # the old primary ran under leases, renewed at half way
        assert res.old_leases_granted > 4


def test_lease_mode_alone_can_stop_at_the_ceiling(make_cluster: Any) -> None:
    """``lease_alone = "stop"``: the lone new primary gets no lease, so it sends nothing."""
    cluster = make_cluster(
        base={
            "sync": {"mode": "sync", "sync_timeout_ms": 2000},
            "promotion": {"esp_seq_margin": 16},
        }
    )
    res = espflow.run(
        cluster, "leases", print, rate=500, lease_block=256, after_s=1.0, lease_alone="stop"
    )
    print(f"leases, alone=stop: {espflow.summary(res)}")
    assert res.sent_after > 200
    assert res.accepted_after + res.kernel_drops_after == res.sent_after  # it still receives
    assert res.from_gateways.get("fw-b", 0) == 0  # ... and sends nothing without a lease
    assert res.new_stats.get("tx_no_lease", 0) == res.accepted_after
    assert res.new_stats.get("tx_ok", 0) == 0
    assert res.reused == [] and res.undecryptable == 0 and res.replay_refused == {}
