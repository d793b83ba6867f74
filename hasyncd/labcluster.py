"""Real hasyncd daemons on loopback: ``LabCluster`` and ``LabNode``, the launcher.

``LabCluster`` writes a key and one TOML file per node into a directory,
starts real ``hasyncd run`` processes and talks to them over their API
sockets.  ``hasyncd lab`` (``hasyncd.lab``), its portal and ESP steps, the
integration tests and the benchmarks all use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasyncd.client import Client
from hasyncd.config import write_key

HOOK_SCRIPT = """#!/bin/sh
# lab hook: record what hasyncd told the data plane
cat > "{dir}/hook-$HASYNCD_NODE-$HASYNCD_HOOK-$HASYNCD_EPOCH-$$.json"
"""


API_TOKEN_FILE = "api-token"  # noqa: S105 - a file name: next to the key, the lab's TCP API token


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LabNode:
    name: str
    dir: Path
    link: str  # host:port
    priority: int = 100
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "ns-a")
    env: dict[str, str] | None = None  # extra environment variables for the process
    proc: subprocess.Popen[bytes] | None = None
    portal: subprocess.Popen[bytes] | None = None  # ``hasyncd portal`` of this node, if started

    @property
    def config(self) -> Path:
        return self.dir / f"{self.name}.toml"

    @property
    def socket(self) -> Path:
        return self.dir / f"{self.name}.sock"

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def portal_log(self) -> Path:
        return self.dir / f"{self.name}-portal.log"

    @property
    def client(self) -> Client:
        return Client(socket=str(self.socket), timeout=30.0)

    def write_config(self, peers: list[str], psk: Path, base: dict[str, dict[str, Any]]) -> None:
        sections: dict[str, dict[str, Any]] = {
            "node": {"name": self.name, "priority": self.priority},
            "link": {"listen": self.link, "peers": peers, "psk_file": str(psk)},
            "api": {"socket": str(self.socket)},
        }
        for layer in (base, self.extra):
            for section, values in layer.items():
                sections.setdefault(section, {}).update(values)
        api = sections["api"]
        if "listen" in api and "token_file" not in api:  # a TCP API needs its token
            api["token_file"] = str(psk.parent / API_TOKEN_FILE)
        self.config.write_text(_toml(sections))

    def start(self) -> None:
        cmd = [*self.prefix, sys.executable, "-m", "hasyncd", "run", "--config", str(self.config)]
        log = self.log.open("ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()

    def start_portal(self) -> None:
        """``hasyncd portal`` with this node's config (which needs a [portal] section)."""
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "hasyncd",
            "portal",
            "--config",
            str(self.config),
        ]
        log = self.portal_log.open("ab")
        self.portal = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the daemon and, if started, the portal: the node dies."""
        for proc in (self.portal, self.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.portal is not None and self.portal.poll() is None:
            self.portal.send_signal(signal.SIGTERM)
            try:
                self.portal.wait(timeout)
            except subprocess.TimeoutExpired:
                self.portal.kill()
                self.portal.wait(10)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def status(self) -> dict[str, Any] | None:
        try:
            return self.client.status()
        except (OSError, RuntimeError, ValueError):
            return None

    def role(self) -> str | None:
        st = self.status()
        return None if st is None else str(st["role"])


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


class LabCluster:
    """Real daemons in one directory; ``base`` config applies to every node."""

    def __init__(self, workdir: Path, nodes: list[LabNode], base: dict[str, dict[str, Any]]):
        self.dir = workdir
        self.nodes = {n.name: n for n in nodes}
        self.psk = workdir / "psk"
        self.base = base

    @classmethod
    def loopback(
        cls,
        workdir: Path,
        names: Sequence[str] = ("fw-a", "fw-b"),
        priorities: Sequence[int] = (200, 100),
        base: dict[str, dict[str, Any]] | None = None,
    ) -> LabCluster:
        nodes = [
            LabNode(name, workdir, f"127.0.0.1:{free_port()}", prio)
            for name, prio in zip(names, priorities, strict=True)
        ]
        defaults: dict[str, dict[str, Any]] = {
            "link": {"hello_holddown_ms": 1000},
            "log": {"level": "info"},
        }
        for section, values in (base or {}).items():
            defaults.setdefault(section, {}).update(values)
        return cls(workdir, nodes, defaults)

    @property
    def api_token(self) -> Path:
        """The bearer token of every node's TCP API (``[api] token_file``)."""
        return self.psk.parent / API_TOKEN_FILE

    def write(self) -> None:
        if not self.psk.exists():
            write_key(self.psk)
        if not self.api_token.exists():
            write_key(self.api_token)
        for node in self.nodes.values():
            peers = [n.link for n in self.nodes.values() if n is not node]
            node.write_config(peers, self.psk, self.base)

    def start(self) -> None:
        self.write()
        for node in self.nodes.values():
            node.start()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def __getitem__(self, name: str) -> LabNode:
        return self.nodes[name]

    def wait(self, cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> float:
        start = time.monotonic()
        while not cond():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what or cond}")
            for node in self.nodes.values():
                if node.proc is not None and node.proc.poll() not in (None, 0, -9, -15):
                    tail = node.log.read_text()[-2000:] if node.log.exists() else ""
                    raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{tail}")
            time.sleep(0.02)
        return time.monotonic() - start

    def primary(self) -> LabNode | None:
        for node in self.nodes.values():
            if node.running and node.role() == "primary":
                return node
        return None

    def wait_pair(self, timeout: float = 20.0) -> tuple[LabNode, LabNode]:
        """Wait for one primary and every other node in sync; returns (primary, a secondary)."""

        def ready() -> bool:
            sts = [n.status() for n in self.nodes.values() if n.running]
            if any(s is None for s in sts):
                return False
            roles = [str(s["role"]) for s in sts if s is not None]
            return roles.count("primary") == 1 and all(s is not None and s["in_sync"] for s in sts)

        self.wait(ready, timeout, "a primary and in-sync secondaries")
        primary = self.primary()
        assert primary is not None
        secondary = next(n for n in self.nodes.values() if n is not primary and n.running)
        return primary, secondary
