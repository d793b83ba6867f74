"""The asyncio shell: moves bytes between sockets and the node core, arms its one timer.

Everything with a protocol rule in it lives in ``hasyncd.core``.  This module
only: listens and dials TCP for the HA link, feeds received bytes and
connection events into the core, writes what the core wants sent, arms a
single ``call_at`` timer for ``core.next_timer()``, and hands the core's
events to the API (event stream, sync-mode waiters), the hook runner, the
metrics and systemd.  Starting, the planned stop, signals and reload are its
base class, ``hasyncd.daemon.lifecycle.Lifecycle``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hasyncd.config import Config
from hasyncd.core.events import (
    Close,
    Dial,
    Event,
    FaultChanged,
    PeerChanged,
    PromotionDone,
    Reannounce,
    RoleChanged,
    StopReady,
    SyncChanged,
    Watermark,
)
from hasyncd.core.node import NodeCore
from hasyncd.daemon.api import Api
from hasyncd.daemon.corelink import LinkProtocol, core_clock, core_settings, wall_clock
from hasyncd.daemon.coreviews import (
    CoreCluster,
    CoreDataPlane,
    CoreReader,
    CoreWriter,
    node_gauges,
)
from hasyncd.daemon.dialer import Dialer
from hasyncd.daemon.eventhub import EventHub
from hasyncd.daemon.hooks import HookRunner
from hasyncd.daemon.lifecycle import Lifecycle
from hasyncd.daemon.metrics import Metrics
from hasyncd.daemon.system import (
    SystemdNotifier,
    status_line,
)
from hasyncd.daemon.views import ApiViews
from hasyncd.daemon.waiters import SyncWaiters
from hasyncd.store import Store

log = logging.getLogger("hasyncd.daemon")


# How often systemd's STATUS= is looked at again (sent only when it changed).
STATUS_REFRESH_S = 1.0


class Daemon(Lifecycle):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.clock = core_clock
        self.wall = wall_clock  # both clocks are read here and passed to the core
        self.store = Store()
        self.core = NodeCore(
            core_settings(config),
            self.store,
            now=self.clock(),
            wall=self.wall(),
            boot_id=os.urandom(16),
        )
        self.transports: dict[int, asyncio.Transport] = {}
        self._conn_ids = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_soon = False  # a transmit is scheduled with call_soon
        self._due: float | None = None  # the core's last next_timer(), for handle_timer
        self._core_done = False  # finish_shutdown ran: no timer, no dial any more
        super().__init__()  # the lifecycle's own state: stop events, listener, first crash
        self._status_sent = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = Metrics(lambda: node_gauges(self.core, self.clock(), self.wall()))
        self.hub = EventHub(on_subscribers=self._record_events_wanted)
        self.waiters = SyncWaiters()
        self.hooks = HookRunner(config.hooks, config.node.name, self.metrics.hook_run)
        self.notifier = SystemdNotifier()
        self.dialer = Dialer(
            lambda address: LinkProtocol(self, True, address),
            lambda: self.config.link.handshake_timeout_ms / 1000.0,
            self._connect_failed,
        )
        self.api = Api(
            ApiViews(
                config=lambda: self.config,
                clock=self.clock,
                writer=CoreWriter(self.core, self.send_now, self.wall),
                reader=CoreReader(self.core),
                cluster=CoreCluster(self.core, self.flush, self.wait_role, self.wall),
                hooks=self.hooks,
                counters=self.metrics,
                waiters=self.waiters,
                hub=self.hub,
                metrics=self.metrics.render,
                dataplane=CoreDataPlane(self.core, self.wall),
            )
        )
        self.role_changed = asyncio.Condition()

    def accepted_link(self) -> LinkProtocol:
        return LinkProtocol(self, False)

    def new_conn_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            name = getattr(task.get_coro(), "__qualname__", task.get_name())
            self.crashed(f"background task {name}", exc)

    def crashed(self, where: str, exc: BaseException) -> None:
        """A bug escaped a task or a callback: log it with its traceback and stop the node.

        Never swallowed and never restarted in place: the state the failed
        code left behind is unknown.  The node makes its planned stop (a
        primary hands over) and exits with status 1, and systemd
        (``Restart=on-failure``) starts it again, resynchronised from a peer.
        """
        log.error("%s failed; stopping the node", where, exc_info=exc)
        if self._failure is None:
            self._failure = (where, exc)
        self._stopping.set()

    # -- the core's outputs ----------------------------------------------------------

    def flush(self) -> None:
        """Write what the core queued, act on its events, re-arm its timer."""
        core = self.core
        for conn_id, data in core.data_to_send():
            transport = self.transports.get(conn_id)
            if transport is not None and not transport.is_closing():
                transport.write(data)
        for ev in core.events():
            self._on_event(ev)
        if self._core_done:
            return
        if core.wants_transmit and not self._transmit_soon:
            self._transmit_soon = True  # coalesced: one transmit for what this loop pass queued
            self.loop.call_soon(self._transmit)
        when = self._due = core.next_timer()
        # Keep an earlier timer: re-arming it later on every flush would let a
        # busy API handler postpone heartbeats forever.  Firing early is harmless.
        if self._timer_at is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_later(max(0.0, when - self.clock()), self._on_timer)

    def send_now(self) -> None:
        """Send what the API's writes queued now, before their request is answered.

        The replication frames leave ahead of the HTTP reply, so what a
        client saw acknowledged is already on its way to the secondaries
        (and a sync-mode wait starts with the frames sent).  Other inputs
        still coalesce through ``flush``'s ``call_soon``.
        """
        if self.core.wants_transmit and not self._core_done:
            self._transmit_now()
        else:
            self.flush()

    def _transmit(self) -> None:
        self._transmit_soon = False
        if not self._core_done:
            self._transmit_now()

    def _transmit_now(self) -> None:
        try:
            self.core.transmit(self.clock(), wall=self.wall())
            self.flush()
        except Exception as exc:  # as for the timer: a bug must stop the node, not hide
            self.crashed("the core's transmit", exc)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            due, self._due = self._due, None  # lateness after it is this node's own stall
            self.core.handle_timer(self.clock(), due, wall=self.wall())
            self.flush()
        except Exception as exc:  # the loop would only log it: the node would stop beating
            self.crashed("the core's timer", exc)

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Dial):
            if not self._core_done:
                self.spawn(self.dialer.dial(ev.address))
            return
        if isinstance(ev, Close):
            transport = self.transports.get(ev.conn_id)
            if transport is not None:
                transport.close()
            return
        if isinstance(ev, Watermark):
            self.waiters.update(ev.version)
            return
        if isinstance(ev, StopReady):
            self._stop_ready.set()
        self.metrics.on_event(ev)
        self.hub.publish(ev)
        core = self.core
        if isinstance(ev, RoleChanged | PeerChanged | SyncChanged):
            self._update_status()
        if isinstance(ev, RoleChanged):
            if ev.new == "secondary":
                self.hooks.submit("on_secondary", self._hook_doc(ev.old, ev.new, ev.reason))
            self.spawn(self._notify_role_waiters())
        elif isinstance(ev, PromotionDone):
            self.hooks.submit("on_primary", self._hook_doc("secondary", "primary", ev.reason))
        elif isinstance(ev, Reannounce):
            self.hooks.submit("on_primary", self._hook_doc("primary", "primary", ev.reason))
        elif isinstance(ev, FaultChanged) and ev.active:
            role = core.roles.role.name.lower()
            reason = "monitored interfaces down: " + ", ".join(ev.monitors_down)
            self.hooks.submit("on_fault", self._hook_doc(role, role, reason))

    def _update_status(self) -> None:
        line = self._status_line()
        if line != self._status_sent:
            self._status_sent = line
            self.notifier.status(line)

    async def _refresh_status(self) -> None:
        # A peer's in-sync state reaches the primary in heartbeats, not as an
        # event: look again once a second, and send only what changed.
        while True:
            await asyncio.sleep(STATUS_REFRESH_S)
            self._update_status()

    def _status_line(self) -> str:
        return status_line(self.core.status(self.clock(), wall=self.wall()))

    async def _notify_role_waiters(self) -> None:
        async with self.role_changed:
            self.role_changed.notify_all()

    def _hook_doc(self, old: str, new: str, reason: str) -> dict[str, object]:
        counts = self.core.status(self.clock(), wall=self.wall())["records"]
        return {
            "node": self.config.node.name,
            "old_role": old,
            "new_role": new,
            "epoch": self.core.roles.epoch,
            "reason": reason,
            "records": counts,
            "time": time.time(),
        }

    def _record_events_wanted(self, wanted: bool) -> None:
        self.core.record_events = wanted

    def _connect_failed(self, address: str, reason: str) -> None:
        self.core.connect_failed(address, self.clock(), reason, wall=self.wall())
        self.flush()

    def _monitors_changed(self, down: tuple[str, ...]) -> None:
        self.core.set_monitors(down, self.clock(), wall=self.wall())
        self.flush()

    async def wait_role(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after a role change (or already holds)."""
        async with self.role_changed:
            try:
                await asyncio.wait_for(self.role_changed.wait_for(predicate), timeout)
            except TimeoutError:
                return False
        return True


def api_socket_path(config: Config) -> Path | None:
    return config.api.socket
