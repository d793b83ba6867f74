"""Handshake failures are logged once a minute per source host, in a bounded table."""

from __future__ import annotations

import logging

import pytest

from hasyncd.core.node import NodeCore
from hasyncd.core.outputs import LOG_EVERY, LOG_KEYS
from hasyncd.core.settings import CoreSettings
from hasyncd.secret import Secret
from hasyncd.store import Store
from hasyncd.wire.channel import Channel
from hasyncd.wire.messages import Hello

PSK = Secret(bytes(range(32)))
WRONG = Secret(bytes(range(1, 33)))


def core() -> NodeCore:
    settings = CoreSettings(name="a", tag=1, priority=100, group_id=1, psk=PSK, listen="x:1")
    return NodeCore(settings, Store(), now=0.0, wall=0.0, boot_id=bytes(16))


def wrong_key_init() -> bytes:
    ch = Channel(initiator=True, psk=WRONG, group_id=1, hello=Hello("m", bytes(16), 9, 1 << 20, ""))
    ch.start()
    return ch.take_output()


def attempt(node: NodeCore, conn_id: int, address: str, now: float) -> None:
    node.connection_made(conn_id, initiator=False, address=address, now=now, wall=0.0)
    node.receive_data(conn_id, wrong_key_init(), now, wall=0.0)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused during handshake" in r.getMessage()]


def test_many_attempts_from_one_host_log_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = core()
    caplog.set_level(logging.WARNING)
    for i in range(200):  # every attempt from a new source port
        attempt(node, i + 1, f"198.51.100.7:{40000 + i}", now=1.0 + i * 0.001)
    assert len(warnings(caplog)) == 1
    assert "psk_mismatch" in warnings(caplog)[0]
    assert node.stats["link_errors"]["psk_mismatch"] == 200  # every one is counted
    attempt(node, 999, "198.51.100.7:50000", now=1.0 + LOG_EVERY + 1)
    assert len(warnings(caplog)) == 2


def test_the_rate_limit_table_is_bounded_under_a_flood_of_hosts() -> None:
    node = core()
    for i in range(LOG_KEYS + 500):
        host = f"[2001:db8::{i:x}]"  # documentation addresses: no traffic is sent
        attempt(node, i + 1, f"{host}:4000", now=1.0)
    assert len(node._log_once) == LOG_KEYS  # the bound is the point
