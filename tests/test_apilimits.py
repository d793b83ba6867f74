"""The API's per-listener connection budgets (hasyncd.daemon.apilimits), without a daemon.

The Unix socket's share can never be taken by TCP connections, and the caps
together stay within what RLIMIT_NOFILE leaves after the link's reserve.
"""

from __future__ import annotations

import asyncio

import pytest

from hasyncd.daemon.apilimits import (
    MAX_API_CONNECTIONS,
    MAX_TCP_CONNECTIONS,
    MAX_UNIX_CONNECTIONS,
    MIN_API_CONNECTIONS,
    TCP,
    UNIX,
    Admission,
    Budget,
    split_caps,
)


def test_without_a_tcp_listener_the_socket_has_the_whole_allowance() -> None:
    assert split_caps(None, tcp=False) == {UNIX: MAX_API_CONNECTIONS}
    assert split_caps(10_000, tcp=False) == {UNIX: MAX_API_CONNECTIONS}
    assert split_caps(100, tcp=False) == {UNIX: 100}
    assert split_caps(-50, tcp=False) == {UNIX: MIN_API_CONNECTIONS}


def test_with_a_tcp_listener_each_gets_its_own_share() -> None:
    full = {UNIX: MAX_UNIX_CONNECTIONS, TCP: MAX_TCP_CONNECTIONS}
    assert split_caps(None, tcp=True) == full
    assert split_caps(MAX_API_CONNECTIONS, tcp=True) == full
    assert MAX_UNIX_CONNECTIONS + MAX_TCP_CONNECTIONS == MAX_API_CONNECTIONS
    assert MAX_UNIX_CONNECTIONS > MAX_TCP_CONNECTIONS  # the trusted clients' share is larger


@pytest.mark.parametrize("available", [16, 17, 40, 100, 136, 200, 255])
def test_small_allowances_are_shared_and_never_exceeded(available: int) -> None:
    caps = split_caps(available, tcp=True)
    assert caps[UNIX] + caps[TCP] <= available
    assert caps[UNIX] >= caps[TCP] >= MIN_API_CONNECTIONS


def test_a_tiny_allowance_still_leaves_each_listener_its_minimum() -> None:
    assert split_caps(3, tcp=True) == {UNIX: MIN_API_CONNECTIONS, TCP: MIN_API_CONNECTIONS}


class _Handler(asyncio.Protocol):
    """Stands for aiohttp's handler: counts itself in its budget as the real one does."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.budget.opened()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.budget.closed()


def test_a_full_tcp_budget_refuses_tcp_only_and_counts_per_listener() -> None:
    budgets = {UNIX: Budget(UNIX, 4), TCP: Budget(TCP, 3)}
    refused: list[str] = []
    admit = {n: Admission(_Handler, b, refused.append) for n, b in budgets.items()}
    admitted = []
    for _ in range(10):
        p = admit[TCP]()
        if isinstance(p, _Handler):  # (a refused one would answer 503 on a real transport)
            p.connection_made(None)  # type: ignore[arg-type]
            admitted.append(p)
    assert len(admitted) == 3
    assert refused == [TCP] * 7
    assert budgets[TCP].as_json() == {"open": 3, "cap": 3, "refused": 7}
    # The socket's share is untouched by the TCP flood.
    unix_conns = [admit[UNIX]() for _ in range(4)]
    assert all(isinstance(p, _Handler) for p in unix_conns)
    for p in unix_conns:
        p.connection_made(None)  # type: ignore[arg-type]
    assert budgets[UNIX].as_json() == {"open": 4, "cap": 4, "refused": 0}
    assert not isinstance(admit[UNIX](), _Handler)  # its own cap, reached by its own clients
    # A closed connection frees its slot, on its own listener only.
    admitted[0].connection_lost(None)
    assert isinstance(admit[TCP](), _Handler)
    assert budgets[UNIX].open == 4
