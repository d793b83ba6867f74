"""The shell's lifecycle: a partial start undoes itself, a crash is never swallowed.

A partial start is checked on a real ``hasyncd run`` process (its exit status
and message) and on an in-process Daemon (what it leaves open).  A crashed
background task or timer callback must be logged with its traceback and
stop the node, which then exits non-zero (systemd's Restart=on-failure starts
it again): checked on an in-process Daemon with real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hasyncd import config as config_mod
from hasyncd.config import Config
from hasyncd.daemon.shell import Daemon
from hasyncd.errors import HasyncdError
from hasyncd.lab import LabCluster, free_port

# Bound on how long a stopping in-process node may take: STOP_BUDGET_S and more,
# only so a regression fails instead of hanging the suite.
HANG_S = 30.0


def lab(tmp_path: Path, api: dict[str, Any] | None = None) -> tuple[LabCluster, Config]:
    cluster = LabCluster.loopback(tmp_path)  # fw-b is configured but not started
    if api:
        cluster["fw-a"].extra = {"api": api}
    cluster.write()
    return cluster, config_mod.load(cluster["fw-a"].config)


def refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        try:
            s.connect((host, int(port)))
        except ConnectionRefusedError:
            return True
    return False


def held_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


@pytest.mark.integration
def test_api_port_in_use_exits_1_with_one_clear_line_and_leaves_nothing(tmp_path: Path) -> None:
    holder, port = held_port()
    try:
        cluster, _ = lab(tmp_path, {"listen": f"127.0.0.1:{port}"})
        node = cluster["fw-a"]
        node.start()
        assert node.proc is not None
        try:
            rc = node.proc.wait(HANG_S)
        except subprocess.TimeoutExpired:
            node.kill()
            raise AssertionError("a node whose API cannot listen kept running") from None
        text = node.log.read_text()
        assert rc == 1, text
        assert f"hasyncd: cannot listen on 127.0.0.1:{port} for the API" in text
        assert "Traceback" not in text  # an operator's error, not a bug
        # The Unix socket was created before the TCP listener failed: removed again.
        assert not node.socket.exists()
        assert refused(node.link)
    finally:
        holder.close()


def test_a_partial_start_closes_the_link_listener_and_the_signal_handlers(
    tmp_path: Path,
) -> None:
    holder, port = held_port()
    cluster, cfg = lab(tmp_path, {"listen": f"127.0.0.1:{port}"})

    async def main() -> None:
        daemon = Daemon(cfg)
        with pytest.raises(HasyncdError, match="for the API"):
            async with asyncio.timeout(HANG_S):
                await daemon.run()
        assert refused(cluster["fw-a"].link)  # the link server opened first is closed
        assert not cluster["fw-a"].socket.exists()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, others
        assert daemon.transports == {}

    try:
        asyncio.run(main())
    finally:
        holder.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


class Boom(Exception):
    pass


def run_until_crash(cfg: Config, crash: Any) -> tuple[Daemon, BaseException]:
    async def main() -> tuple[Daemon, BaseException]:
        daemon = Daemon(cfg)
        task = asyncio.ensure_future(daemon.run())
        while not (daemon.api._listeners and daemon._server is not None):
            await asyncio.sleep(0.01)
            assert not task.done(), task
        crash(daemon)
        try:
            async with asyncio.timeout(HANG_S):
                await task
        except TimeoutError:
            raise AssertionError("the node kept running after a crash") from None
        except HasyncdError as exc:
            return daemon, exc
        raise AssertionError("the node exited as if nothing had happened")

    return asyncio.run(main())


def test_a_crashed_background_task_is_logged_and_stops_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, cfg = lab(tmp_path)

    async def broken() -> None:
        await asyncio.sleep(0)
        raise Boom("broken helper")

    with caplog.at_level(logging.INFO, logger="hasyncd"):
        _, exc = run_until_crash(cfg, lambda d: d.spawn(broken()))
    assert "internal error in background task" in str(exc)
    assert "broken" in str(exc)
    failed = [r for r in caplog.records if "failed; stopping the node" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None  # with its traceback
    assert failed[0].exc_info[0] is Boom
    assert any(r.getMessage() == "stopped" for r in caplog.records)  # a planned stop, then exit
    assert refused(cluster["fw-a"].link)
    assert not cluster["fw-a"].socket.exists()


def test_a_failing_timer_callback_stops_the_node_instead_of_silencing_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, cfg = lab(tmp_path)

    def break_timer(daemon: Daemon) -> None:
        def handle_timer(now: float, due: float | None = None, *, wall: float) -> None:
            raise Boom("timer")

        daemon.core.handle_timer = handle_timer  # type: ignore[method-assign]
        daemon.loop.call_soon(daemon._on_timer)

    with caplog.at_level(logging.INFO, logger="hasyncd"):
        _, exc = run_until_crash(cfg, break_timer)
    assert "the core's timer" in str(exc)
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records)


@pytest.mark.timeout(HANG_S * 2)  # (a regression would otherwise run until the suite's timeout)
def test_the_cli_exits_1_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hasyncd import cli  # noqa: PLC0415

    _, cfg = lab(tmp_path)
    real_start = Daemon.start

    async def start_then_crash(self: Daemon) -> None:
        await real_start(self)

        async def broken() -> None:
            raise Boom("after start")

        self.spawn(broken())

    monkeypatch.setattr(Daemon, "start", start_then_crash)
    monkeypatch.setattr("hasyncd.daemon.logs.setup", lambda level: None)
    assert cli.main(["run", "--config", str(cfg.path)]) == cli.EXIT_RUNTIME


@pytest.mark.integration
def test_the_goodbye_arrives_although_an_api_request_holds_up_the_stop(
    make_cluster: Any,
) -> None:
    """The stopping node keeps its heartbeats going while its API drains.

    A request still reading its body makes the API drain last API_DRAIN_S.
    If the node went silent meanwhile, its peer would declare it lost
    (heartbeat interval x threshold = 0.5 s here), close the link, and the
    GOODBYE would never be read.
    """
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    held = socket.socket(socket.AF_UNIX)
    held.connect(str(secondary.socket))
    held.sendall(
        b"PUT /v1/records/ike_sa/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"a":'
    )
    try:
        time.sleep(0.3)  # (lets the request reach its handler, which waits for the body)
        secondary.signal(signal.SIGTERM)
        assert secondary.proc is not None
        assert secondary.proc.wait(15) == 0
        cluster.wait(
            lambda: "fw-b closed the link: shutdown" in primary.log.read_text(), 5, "the GOODBYE"
        )
        assert "peer fw-b lost: no authenticated frame" not in primary.log.read_text()
    finally:
        held.close()


def test_free_port_helper_is_free() -> None:
    # (guards the tests above: a port from free_port() must be connectable-refused)
    assert refused(f"127.0.0.1:{free_port()}")
