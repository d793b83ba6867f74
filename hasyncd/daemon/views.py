"""The narrow views the API, the metrics and the hooks have of the node, instead of the Daemon.

Each consumer gets only what it reads or calls: the API a record writer and
reader, a cluster view (a status snapshot, the role history, failover), the
counters it bumps, the sync-mode waiters and the event hub; the metrics a
gauge snapshot; the hook runner a result callback.  They are Protocols (or
frozen snapshots) so each consumer is unit-tested without a Daemon, a core
or a socket; ``hasyncd.daemon.coreviews`` implements them over the node core.
Of the daemon, only the event hub (which depends on nothing) is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from hasyncd.config import Config
from hasyncd.core.counterpath import Outcome
from hasyncd.daemon.eventhub import EventHub
from hasyncd.records import Kind, Record
from hasyncd.store import Entry
from hasyncd.wire.messages import Role


class Written(Protocol):
    """The outcome of one accepted write."""

    @property
    def version(self) -> int: ...
    @property
    def created(self) -> bool: ...


class RecordWriter(Protocol):
    """Local writes (primary only; a refusal raises ``WriteRefused``)."""

    def write(self, record: Record, now: float) -> Written: ...
    def delete(self, kind: int, rid: str, now: float) -> Written | None: ...
    def write_batch(
        self, ops: list[tuple[int, str, Record | None]], now: float
    ) -> list[Any]: ...  # per op: a Written, a HasyncdError or None (absent delete)
    def flush(self) -> None:
        """Send what the writes so far queued (replication, heartbeats)."""


class RecordReader(Protocol):
    def get(self, kind: int, rid: str, wall: float) -> Entry | None: ...
    def page(
        self, kind: int, after: str | None, limit: int, wall: float
    ) -> list[tuple[str, Entry]]: ...
    def shown(self, kind: Kind, rid: str, entry: Entry) -> dict[str, Any]:
        """A live stored record as the API shows it (through the promotion history)."""
        ...


class DataPlane(Protocol):
    """The data plane's calls (``hasyncd.daemon.counterapi``): counters, leases, rekeys."""

    def update_counters(self, items: list[Any], now: float) -> Outcome: ...
    def write_leases(self, items: list[Any], now: float) -> Outcome: ...
    def has_in_sync_secondary(self) -> bool: ...
    def count(self, counter: str, label: str, n: int) -> None: ...
    def rekey(self) -> dict[str, Any]:
        """The rekey governor's state and its recent releases."""
        ...


class ClusterView(Protocol):
    """What the API shows of the cluster and the one operator action it takes."""

    def status(self, now: float) -> dict[str, object]: ...
    def history(self) -> list[dict[str, object]]: ...
    def role(self) -> Role: ...
    def epoch(self) -> int: ...
    def request_failover(self, now: float) -> str:
        """Start a manual handover; the target's name (``WriteRefused`` if impossible)."""
        ...

    def wait_not_primary(self, timeout: float) -> Awaitable[bool]:
        """True once this node has handed the primary role over, False after ``timeout``."""
        ...


class HookState(Protocol):
    @property
    def queued(self) -> int: ...
    @property
    def running(self) -> str | None: ...
    def recent(self) -> list[dict[str, object]]: ...


class ApiCounters(Protocol):
    def count_api_error(self, code: str) -> None: ...
    def count_connection_refused(self, listener: str) -> None:
        """A connection answered 503 past its listener's cap."""
        ...

    def watch_api_listener(self, listener: str, cap: int, open_now: Callable[[], float]) -> None:
        """Export a listener's cap and, read at each scrape, its open connections."""
        ...

    def count_api_request(self, route: str, status: int) -> None: ...
    def count_not_replicated(self, kind: str) -> None: ...
    def count_sync_write(self, replicated: bool) -> None: ...


class SyncWait(Protocol):
    def wait(self, version: int, timeout: float) -> Awaitable[bool]: ...


HookResult = Callable[[str, str, float], None]  # (hook, result, seconds): the hook runner's
LagObserver = Callable[[float], None]  # seconds the loop ran late: the loop-lag monitor's


@dataclasses.dataclass(frozen=True, slots=True)
class SessionGauges:
    """A secondary's replication session, as the primary sees it."""

    pending: int
    in_sync: bool
    lag_seconds: float
    lag_records: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerGauges:
    name: str
    up: bool
    link: bool
    silence: float  # seconds since its last frame (0: none yet)
    rtt: float | None
    in_flight: int
    session: SessionGauges | None
    # The link's key id (hex) and which of this node's keys it is: current, next, retired.
    key: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeGauges:
    """Everything ``/metrics`` reads from the core, taken at scrape time."""

    stats: Mapping[str, Mapping[str, int]]
    role: Role
    epoch: int
    in_sync: bool  # a primary holds a complete copy by definition
    fenced: bool
    suspended: bool
    records: Mapping[str, int]  # live records by kind name
    peers: tuple[PeerGauges, ...]
    freshness: Mapping[str, object]  # how stale the SA counters are (core.freshness)
    rekey_pending: int  # SAs waiting in the rekey governor


@dataclasses.dataclass(frozen=True, slots=True)
class ApiViews:
    """Everything the API reaches: one field per narrow view."""

    config: Callable[[], Config]  # the current one: a reload replaces it
    clock: Callable[[], float]  # the core's clock (``now``)
    writer: RecordWriter
    reader: RecordReader
    cluster: ClusterView
    hooks: HookState
    counters: ApiCounters
    waiters: SyncWait
    hub: EventHub  # concrete: it depends on nothing but the core's event types
    metrics: Callable[[], bytes]  # the /metrics exposition
    dataplane: DataPlane


__all__ = [
    "ApiCounters",
    "ApiViews",
    "ClusterView",
    "DataPlane",
    "HookState",
    "NodeGauges",
    "PeerGauges",
    "RecordReader",
    "RecordWriter",
    "SessionGauges",
    "SyncWait",
    "Written",
]
