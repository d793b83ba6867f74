"""The daemon's lifecycle: start, the planned stop, signals and reload.

``Lifecycle`` is the base of ``hasyncd.daemon.shell.Daemon`` and owns what
only a start or a stop touches: the link listener, the interface monitor,
the stop events, the first crash.  The order follows aiohttp's
``BaseRunner.cleanup`` and uvicorn's ``Server.shutdown``: a partial start is
undone quietly (``_close`` is safe at any point), a planned stop is bounded
by STOP_BUDGET_S whatever peers and API clients do, and a second
SIGTERM/SIGINT skips every remaining wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from hasyncd.config import Config
from hasyncd.config import load as load_config
from hasyncd.core.node import NodeCore
from hasyncd.daemon import logs
from hasyncd.daemon.api import API_DRAIN_S, Api
from hasyncd.daemon.corelink import core_settings
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
)
from hasyncd.daemon.waiters import SyncWaiters
from hasyncd.errors import ConfigError, HasyncdError

log = logging.getLogger("hasyncd.daemon")

# A planned stop ends within this many seconds whatever peers and API clients
# do: below systemd's TimeoutStopSec=15 (systemd/hasyncd.service), so a
# stopping primary is never SIGKILLed in the middle of its handover.
STOP_BUDGET_S = 12.0
# How long the GOODBYE frames get to leave before the link sockets are aborted.
LINK_DRAIN_S = 0.5
# Margin on top of the core's own bounds (snapshot wait + handover timeout).
STOP_SLACK_S = 0.5


class Lifecycle:
    """Start, stop, signals and reload of a daemon (``shell.Daemon`` supplies the parts)."""

    # The daemon's parts (set by shell.Daemon before it calls Lifecycle.__init__).
    config: Config
    loop: asyncio.AbstractEventLoop
    core: NodeCore
    clock: Callable[[], float]
    wall: Callable[[], float]
    metrics: Metrics
    notifier: SystemdNotifier
    hooks: HookRunner
    hub: EventHub
    api: Api
    waiters: SyncWaiters
    transports: dict[int, asyncio.Transport]
    _tasks: set[asyncio.Task[None]]
    _timer: asyncio.TimerHandle | None
    _timer_at: float | None
    _core_done: bool

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()  # a second stop signal: no more waiting
        self._stop_ready = asyncio.Event()  # the core's StopReady
        self._links_closed = asyncio.Event()
        self._stopped = False
        self._server: asyncio.Server | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._failure: tuple[str, BaseException] | None = None  # the first crash: exit 1

    # -- what the daemon does (shell.Daemon) ----------------------------------------

    def flush(self) -> None:
        raise NotImplementedError

    def accepted_link(self) -> asyncio.Protocol:
        """The protocol of a link a peer dialed in."""
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        raise NotImplementedError

    def _monitors_changed(self, down: tuple[str, ...]) -> None:
        raise NotImplementedError

    async def _refresh_status(self) -> None:
        raise NotImplementedError

    def links_closed(self) -> None:
        """The last link transport is gone (what a stop waits for after its GOODBYEs)."""
        self._links_closed.set()

    # -- start ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the link, start the API and the helpers; ``stop()`` undoes any part."""
        listen = self.config.link.listen
        try:
            self._server = await self.loop.create_server(
                self.accepted_link, listen.host, listen.port, reuse_address=True
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

    # -- signals and reload -----------------------------------------------------------

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

    # -- run and stop ------------------------------------------------------------------

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
