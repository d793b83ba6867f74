"""The asyncio shell: moves bytes between sockets and the node core, arms its one timer.

Everything with a protocol rule in it lives in ``hasyncd.core``.  This module
only: listens and dials TCP for the HA link, feeds received bytes and
connection events into the core, writes what the core wants sent, arms a
single ``call_at`` timer for ``core.next_timer()``, and hands the core's
events to the API (event stream, sync-mode waiters), the hook runner, the
metrics and systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hasyncd.config import Config
from hasyncd.config import load as load_config
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
from hasyncd.daemon import logs
from hasyncd.daemon.api import API_DRAIN_S, Api
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
from hasyncd.daemon.metrics import Metrics
from hasyncd.daemon.reload import plan as plan_reload
from hasyncd.daemon.system import (
    GcPauses,
    InterfaceMonitor,
    LoopLagMonitor,
    SystemdNotifier,
    freeze_startup_heap,
    status_line,
)
from hasyncd.daemon.views import ApiViews
from hasyncd.daemon.waiters import SyncWaiters
from hasyncd.errors import ConfigError, HasyncdError
from hasyncd.store import Store

log = logging.getLogger("hasyncd.daemon")


# A planned stop ends within this many seconds whatever peers and API clients
# do: below systemd's TimeoutStopSec=15 (systemd/hasyncd.service), so a
# stopping primary is never SIGKILLed in the middle of its handover.
STOP_BUDGET_S = 12.0
# How long the GOODBYE frames get to leave before the link sockets are aborted.
LINK_DRAIN_S = 0.5
# Margin on top of the core's own bounds (snapshot wait + handover timeout).
STOP_SLACK_S = 0.5
# How often systemd's STATUS= is looked at again (sent only when it changed).
STATUS_REFRESH_S = 1.0


class Daemon:
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
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()  # a second stop signal: no more waiting
        self._stop_ready = asyncio.Event()  # the core's StopReady
        self._links_closed = asyncio.Event()
        self._stopped = False
        self._core_done = False  # finish_shutdown ran: no timer, no dial any more
        self._monitor_task: asyncio.Task[None] | None = None
        self._status_sent = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: tuple[str, BaseException] | None = None  # the first crash: exit 1
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
        self._server: asyncio.Server | None = None
        self.role_changed = asyncio.Condition()

    def links_closed(self) -> None:
        self._links_closed.set()

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

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the link, start the API and the helpers; ``stop()`` undoes any part."""
        listen = self.config.link.listen
        try:
            self._server = await self.loop.create_server(
                lambda: LinkProtocol(self, False), listen.host, listen.port, reuse_address=True
            )
        except OSError as exc:
            raise HasyncdError(
                f"cannot listen on {listen} for the HA link: {exc.strerror}"
            ) from None
        await self.api.start()
        self.spawn(self.hooks.run())
        self.spawn(LoopLagMonitor(self.metrics.loop_lag).run())
        self._start_monitor()
        self.flush()
        self.notifier.ready(f"starting: link {listen}")
        log.info(
            "hasyncd %s started: link %s, peers %s, api %s",
            self.config.node.name,
            listen,
            ", ".join(str(p) for p in self.config.link.peers),
            ", ".join(str(x) for x in (self.config.api.socket, self.config.api.listen) if x),
        )

    def _start_monitor(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            self._monitor_task = None
        names = self.config.node.monitor
        if names:
            self._monitor_task = self.spawn(InterfaceMonitor(names, self._monitors_changed).run())
        elif self.core.roles.monitors_down:
            self._monitors_changed(())

    def _monitors_changed(self, down: tuple[str, ...]) -> None:
        self.core.set_monitors(down, self.clock(), wall=self.wall())
        self.flush()

    # -- signals -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: a planned stop; a second one forces the exit (no more waiting)."""
        if self._stopping.is_set():
            if not self._force.is_set():
                log.warning("second stop signal: exiting without waiting any longer")
            self._force.set()
        self._stopping.set()

    def request_reload(self) -> None:
        """SIGHUP (``systemctl reload``): apply what can change live, name what cannot."""
        if self._stopping.is_set():
            return
        new = self._load_for_reload()
        if new is None:
            self.metrics.reloads.labels("refused").inc()
            return
        change = plan_reload(self.config, new)
        for line in change.applied:
            log.info("reload: %s", line)
        for key in change.need_restart:
            log.warning("reload: %s changed: takes effect only after a restart", key)
        if not change.applied and not change.need_restart:
            log.info("reload: configuration unchanged")
        self.config = change.config
        self.metrics.reloads.labels("applied").inc()
        if not change.applied:
            return
        logs.set_level(self.config.log.level)
        self.hooks.reconfigure(self.config.hooks)
        self.core.reconfigure(core_settings(self.config), self.clock(), wall=self.wall())
        self._start_monitor()
        self.flush()

    def _load_for_reload(self) -> Config | None:
        try:
            return load_config(self.config.path)
        except ConfigError as exc:
            # One line naming the key, as at start-up; the traceback would say nothing more.
            log.error("reload refused, configuration unchanged: %s", exc.message)  # noqa: TRY400
            return None

    async def wait_role(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after a role change (or already holds)."""
        async with self.role_changed:
            try:
                await asyncio.wait_for(self.role_changed.wait_for(predicate), timeout)
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        signals = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
        }
        # Before anything starts: a signal during start-up must not kill the process
        # with its default action (SIGHUP's is to terminate, leaving the socket behind).
        for sig, handler in signals.items():
            self.loop.add_signal_handler(sig, handler)
        gc_pauses = GcPauses(self.metrics.gc_pause)
        gc_pauses.install()
        try:
            try:
                await self.start()
            except BaseException:
                await self._close()  # a partial start: undo what was started, quietly
                raise
            freeze_startup_heap()
            self.spawn(self.notifier.watchdog())
            if self.notifier.enabled:
                self.spawn(self._refresh_status())
            await self._stopping.wait()
            await self.stop()
        finally:
            gc_pauses.remove()
            for sig in signals:
                self.loop.remove_signal_handler(sig)
        if self._failure is not None:
            where, exc = self._failure
            raise HasyncdError(f"stopped after an internal error in {where}: {exc!r} (logged)")

    async def _until(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for ``event`` for at most ``timeout`` s, or until a second signal forces."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._force.wait())}
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout), return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
        return event.is_set()

    async def stop(self) -> None:
        """A planned stop, bounded by STOP_BUDGET_S whatever peers and API clients do.

        1. the core's planned stop (``hasyncd.core.stopping``): a primary hands
           over, after waiting (bounded) for a secondary still loading its snapshot;
        2. the API: event streams end with a ``shutdown`` event, other requests
           get API_DRAIN_S, then are cancelled;
        3. GOODBYE on every link; the transports close once their buffers are
           written (at most LINK_DRAIN_S), then are aborted.
        Safe after a partial start; a second SIGTERM/SIGINT skips every wait.
        """
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping")
        self.notifier.stopping()
        core = self.core
        handover = self.config.promotion.handover_timeout_ms / 1000.0
        snapshot_wait = max(0.0, STOP_BUDGET_S - handover - 2 * API_DRAIN_S - LINK_DRAIN_S)
        core.begin_shutdown(self.clock(), snapshot_wait, wall=self.wall())
        self.flush()
        if not await self._until(self._stop_ready, snapshot_wait + handover + STOP_SLACK_S):
            log.warning("stop: the handover did not finish in time; stopping anyway")
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        """Close everything ``start()`` opened, in order; safe after a partial start.

        The core's timer keeps running while the API drains: a node that went
        silent for the drain (up to 2 x API_DRAIN_S) would be declared lost by
        its peers before its GOODBYE arrived, and the peer's loss handling
        would close the link the GOODBYE was to travel on.
        """
        core = self.core
        if self._server is not None:
            self._server.close()  # no new links; the open ones get their GOODBYE below
        self.hub.close("node shutting down")
        await self.api.stop()
        core.finish_shutdown(self.clock(), wall=self.wall())
        self.flush()
        self._core_done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        for transport in list(self.transports.values()):
            transport.close()  # writes what is buffered (the GOODBYE), then closes
        if self.transports and not self._force.is_set():
            self._links_closed.clear()
            await self._until(self._links_closed, LINK_DRAIN_S)
        for transport in list(self.transports.values()):
            if unsent := transport.get_write_buffer_size():  # the GOODBYE is at its end
                log.warning("stop: a link's last %d bytes (its GOODBYE) were not sent", unsent)
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.waiters.update(None)


def api_socket_path(config: Config) -> Path | None:
    return config.api.socket
