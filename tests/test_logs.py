"""Log lines: logfmt, journald priorities under systemd, debug lines that explain decisions."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.daemon.logs import LogfmtFormatter
from hasyncd.lab import LabCluster


def record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("hasyncd.roles", level, __file__, 1, msg, args, None)


def test_logfmt_quotes_values_and_never_splits_a_line() -> None:
    fmt = LogfmtFormatter(journal=False)
    line = fmt.format(record(logging.WARNING, 'PROMOTED to primary: "why"\nnext'))
    assert re.fullmatch(
        r'time=\S+ level=warning logger=hasyncd\.roles msg="PROMOTED to primary: \\"why\\"\\nnext"',
        line,
    ), line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
    ],
)
def test_under_journald_each_line_starts_with_its_priority(level: int, prefix: str) -> None:
    line = LogfmtFormatter(journal=True).format(record(level, "x"))
    assert line.startswith(prefix + "level=")
    assert "time=" not in line  # the journal keeps its own timestamps


def journal_env(log: Path) -> dict[str, str]:
    """What systemd sets when stderr is a journal stream: its device and inode."""
    log.touch()
    st = os.stat(log)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.mark.integration
def test_a_real_node_under_the_journal_logs_promotions_as_warnings(tmp_path: Path) -> None:
    cluster = LabCluster.loopback(tmp_path, base={"log": {"level": "debug"}})
    b = cluster["fw-b"]
    b.env = journal_env(b.log)
    cluster.start()
    try:
        primary, secondary = cluster.wait_pair()
        assert secondary is b
        rid, rec = samples.web_session(1, time.time())
        assert primary.client.put(f"/v1/records/sslvpn_web_session/{rid}", rec)[0] == 201
        cluster.wait(lambda: (b.status() or {}).get("records", {}).get("sslvpn_web_session") == 1)
        primary.signal(signal.SIGKILL)
        cluster.wait(lambda: b.role() == "primary", 5, "promotion")
        lines = b.log.read_text().splitlines()
        promoted = [x for x in lines if "PROMOTED" in x]
        assert promoted
        assert all(x.startswith("<4>level=warning logger=hasyncd.roles msg=") for x in promoted)
        assert any(x.startswith("<6>level=info") for x in lines)
        # debug: the link, replication and election decisions, from hasyncd only
        debug = [x for x in lines if x.startswith("<7>")]
        for want in ("dialing", "authenticated", "election: winner", "applied", "handshake"):
            assert any(want in x for x in debug), (want, debug[:20])
        assert all("logger=hasyncd" in x for x in debug), [x for x in debug if "hasyncd" not in x]
        # the other node's stderr is a file, not the journal: timestamps, no priorities
        assert primary.log.read_text().startswith("time=")
    finally:
        for node in cluster.nodes.values():
            node.kill()


@pytest.mark.integration
def test_info_level_has_no_debug_lines(make_cluster: Any) -> None:
    cluster = make_cluster()
    a, _b = cluster.wait_pair()
    assert "level=debug" not in a.log.read_text()
    assert "level=info logger=hasyncd.daemon" in a.log.read_text()


@pytest.mark.integration
def test_sd_notify_status_follows_peers_and_sync(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    cluster = LabCluster.loopback(tmp_path)
    a, b = cluster["fw-a"], cluster["fw-b"]
    a.env = {"NOTIFY_SOCKET": str(sock_path)}
    cluster.write()
    got: list[str] = []

    def status_lines() -> list[str]:
        while True:
            try:
                got.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                return [x.removeprefix("STATUS=") for x in got if x.startswith("STATUS=")]

    try:
        a.start()
        cluster.wait(lambda: "READY=1" in got or bool(status_lines() and "READY=1" in got), 10)
        b.start()
        cluster.wait(lambda: any("fw-b up, in sync" in x for x in status_lines()), 10, "in sync")
        b.kill()
        cluster.wait(lambda: "fw-b down" in status_lines()[-1], 10, "peer down in STATUS")
        assert status_lines()[-1].startswith("primary in epoch ")
    finally:
        for node in cluster.nodes.values():
            node.kill()
        sock.close()
