"""Who may use the API and in which format: the TCP API's token, Content-Type (issue 13)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.config import load_secret, parse
from hasyncd.errors import ConfigError
from hasyncd.lab import LabCluster, LabNode, free_port

from .test_integration_spine import metric


def base_config(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "psk").write_text("00" * 32)
    (tmp_path / "psk").chmod(0o600)
    return {
        "node": {"name": "fw-a"},
        "link": {"listen": "127.0.0.1:7001", "peers": ["127.0.0.1:7002"], "psk_file": "psk"},
        "api": {"listen": "127.0.0.1:7480"},
    }


def test_a_tcp_api_without_a_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse(base_config(tmp_path), tmp_path / "x.toml")
    assert "[api].listen needs [api].token_file" in err.value.message


def test_keygen_token_writes_a_private_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    out = subprocess.run(
        [sys.executable, "-m", "hasyncd", "keygen", "--token", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "[api] token_file" in out.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(load_secret(path, "t").reveal()) == 32


def tcp(node: LabNode, method: str, path: str, token: str | None, **kw: Any) -> tuple[int, Any]:
    host, _, port = node.extra["api"]["listen"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, headers=headers, **kw)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body), resp.getheader("WWW-Authenticate"))
    finally:
        conn.close()


@pytest.mark.integration
def test_the_tcp_api_needs_its_token_and_the_socket_does_not(tmp_path: Path) -> None:
    cluster = LabCluster.loopback(tmp_path)
    a = cluster["fw-a"]
    a.extra = {"api": {"listen": f"127.0.0.1:{free_port()}"}}
    try:
        cluster.start()
        cluster.wait_pair()
        token = cluster.api_token.read_text().strip()
        for given in (None, "00" * 32, token[:-1], "", token + "0"):
            code, (body, challenge) = tcp(a, "GET", "/v1/status", given)
            assert (code, body["error"], challenge) == (401, "unauthorized", "Bearer"), given
        rid, rec = samples.web_session(1, time.time())
        path = f"/v1/records/sslvpn_web_session/{rid}"
        headers = {"Content-Type": "application/json"}
        code, _ = tcp(a, "PUT", path, None, body=json.dumps(rec), headers=headers)
        assert code == 401
        assert a.client.get(path)[0] == 404  # nothing was written
        assert tcp(a, "GET", "/v1/status", token)[0] == 200
        assert a.client.get("/v1/status")[0] == 200  # the Unix socket
        assert metric(a, "hasyncd_api_errors_total", error="unauthorized") == 6
        # The CLI finds the token through the config (TCP only) or --token-file.
        tcp_only = tmp_path / "tcp-only.toml"
        text = a.config.read_text().replace(f'socket = "{a.socket}"\n', "")
        tcp_only.write_text(text)
        ok = cli("status", "--json", "--config", str(tcp_only))
        assert ok.returncode == 0 and json.loads(ok.stdout)["node"] == "fw-a", ok.stderr
        address = a.extra["api"]["listen"]
        refused = cli("status", "--api", address)
        assert refused.returncode == 1
        assert (
            refused.stderr.strip()
            == "hasyncd: unauthorized: the TCP API needs 'Authorization: Bearer <token>'"
        )
        ok = cli("status", "--api", address, "--token-file", str(cluster.api_token))
        assert ok.returncode == 0, ok.stderr
    finally:
        for node in cluster.nodes.values():
            node.kill()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", *args], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


@pytest.mark.integration
def test_a_wrong_content_type_is_415_and_stores_nothing(make_cluster: Any) -> None:
    cluster = make_cluster()
    a, _ = cluster.wait_pair()
    rid, rec = samples.web_session(2, time.time())
    path = f"/v1/records/sslvpn_web_session/{rid}"
    for ctype in ("text/plain", "application/xml", "application/x-ndjson"):
        code, body = a.client.request("PUT", path, rec, content_type=ctype)
        assert (code, body["error"]) == (415, "unsupported_media_type"), ctype
    op = {"op": "put", "kind": "sslvpn_web_session", "id": rid, "record": rec}
    for ctype in ("text/html", "application/json"):
        code, body = a.client.request(
            "POST", "/v1/records:batch", raw=json.dumps(op).encode(), content_type=ctype
        )
        assert (code, body["error"]) == (415, "unsupported_media_type"), ctype
    assert a.client.get(path)[0] == 404
    assert metric(a, "hasyncd_api_errors_total", error="unsupported_media_type") == 5
    assert (
        a.client.request("PUT", path, rec, content_type="application/json; charset=utf-8")[0] == 201
    )


def run_node(cluster: LabCluster, node: LabNode) -> subprocess.CompletedProcess[str]:
    """Start ``node`` in the foreground until it exits (a refused start exits at once)."""
    cluster.write()
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", "run", "--config", str(node.config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.integration
def test_a_socket_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    cluster = LabCluster.loopback(tmp_path)
    a = cluster["fw-a"]
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    a.extra = {"api": {"socket": str(shared / "api.sock")}}
    out = run_node(cluster, a)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "writable by group or others (mode 0777" in lines[0], out.stderr
    assert not (shared / "api.sock").exists()


@pytest.mark.integration
def test_only_a_stale_socket_is_replaced_never_another_file(tmp_path: Path) -> None:
    cluster = LabCluster.loopback(tmp_path)
    a = cluster["fw-a"]
    a.socket.write_text("not a socket: the operator's file")
    out = run_node(cluster, a)
    assert out.returncode == 1
    assert "exists and is not a socket: refusing to remove it" in out.stderr
    assert a.socket.read_text() == "not a socket: the operator's file"
    a.socket.unlink()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(a.socket))  # bound, never listening: what a killed node leaves
    stale.close()
    a.start()
    try:
        cluster.wait(lambda: a.status() is not None, 15, "the API on the stale socket's path")
    finally:
        a.kill()
