"""CLI errors are one line naming the file or value, with a non-zero exit: never a traceback.

Runs the real ``hasyncd`` command in a subprocess; the ``--api`` cases that must
reach a daemon start a real two-node cluster on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hasyncd.cli import DEFAULT_SOCKET
from hasyncd.config import write_key
from hasyncd.lab import free_port


def run_cli(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    """Assert a non-zero exit with exactly one stderr line naming every one of ``names``."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{proc.stderr}"
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _config(tmp_path: Path, extra: str = "") -> str:
    psk = tmp_path / "psk"
    if not psk.exists():
        write_key(psk)
    return (
        f'[node]\nname = "fw-a"\n\n'
        f'[link]\nlisten = "127.0.0.1:{free_port()}"\npeers = ["127.0.0.1:{free_port()}"]\n'
        f'psk_file = "{psk}"\n\n{extra}'
        f'[api]\nsocket = "{tmp_path / "api.sock"}"\n'
    )


def bad_config(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A config file for ``case`` and the strings its one-line error must contain."""
    path = tmp_path / f"{case}.toml"
    if case == "missing":
        return path, [str(path), "No such file"]
    if case == "directory":
        path.mkdir()
        return path, [str(path), "directory"]
    if case == "invalid_toml":
        path.write_text('[node\nname = "fw-a"\n')
        return path, [str(path), "not valid TOML", "line 1"]
    assert case == "missing_hook"
    hook = tmp_path / "no-such-hook.sh"
    path.write_text(_config(tmp_path, f'[hooks]\non_primary = "{hook}"\n\n'))
    return path, ["[hooks].on_primary", str(hook)]


@pytest.mark.parametrize("command", ["run", "check-config", "status", "failover"])
@pytest.mark.parametrize("case", ["missing", "directory", "invalid_toml", "missing_hook"])
def test_config_file_errors_are_one_line(tmp_path: Path, command: str, case: str) -> None:
    path, want = bad_config(tmp_path, case)
    proc = run_cli([command, "--config", str(path)])
    one_line_error(proc, *want)
    assert not (tmp_path / "api.sock").exists()


@pytest.mark.parametrize("command", ["status", "failover"])
def test_unreachable_socket_names_the_path(tmp_path: Path, command: str) -> None:
    path = tmp_path / "nonexistent" / "api.sock"
    one_line_error(run_cli([command, "--api", str(path)]), str(path), "cannot reach")


@pytest.mark.parametrize("command", ["status", "failover"])
def test_unreachable_socket_from_config_names_the_path(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "good.toml"
    cfg.write_text(_config(tmp_path))
    proc = run_cli([command, "--config", str(cfg)])
    one_line_error(proc, str(tmp_path / "api.sock"), "cannot reach")


def test_default_socket_unreachable_names_the_path() -> None:
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"{DEFAULT_SOCKET} exists on this machine")
    one_line_error(run_cli(["status"]), DEFAULT_SOCKET)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("bad:value:x", "bad:value:x"),
        ("localhost:7480", "localhost:7480"),
        ("127.0.0.1:99999", "99999"),
    ],
)
def test_bad_api_address_is_one_line(value: str, named: str) -> None:
    one_line_error(run_cli(["status", "--api", value]), "--api", named)


def test_relative_socket_path_without_daemon_is_one_line(tmp_path: Path) -> None:
    proc = run_cli(["status", "--api", "run/api.sock"], cwd=tmp_path)
    one_line_error(proc, "run/api.sock", "cannot reach")


def test_run_with_unusable_api_socket_dir_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "sock.toml"
    sock = "/proc/hasyncd-no-such-dir/api.sock"  # /proc refuses new directories
    cfg.write_text(_config(tmp_path).replace(str(tmp_path / "api.sock"), sock))
    one_line_error(run_cli(["run", "--config", str(cfg)]), sock)


@pytest.mark.integration
def test_status_api_socket_path_reaches_a_live_daemon(make_cluster: Any) -> None:
    cluster = make_cluster()
    node = cluster["fw-a"]
    cluster.wait(lambda: node.status() is not None, 20, "fw-a's API")
    rel = node.socket.relative_to(cluster.dir.parent)
    for cwd, value in (
        (cluster.dir, node.socket.name),  # a bare file name in the current directory
        (cluster.dir, f"./{node.socket.name}"),
        (cluster.dir.parent, str(rel)),  # relative, with a directory: was taken as host:port
        (None, str(node.socket)),
    ):
        proc = run_cli(["status", "--json", "--api", value], cwd=cwd)
        assert proc.returncode == 0, (value, proc.stderr)
        assert '"node": "fw-a"' in proc.stdout, proc.stdout
