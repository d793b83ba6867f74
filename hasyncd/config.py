"""The TOML configuration: parsed, fully validated and frozen before anything starts.

Every key is declared once below, as a field of its section's frozen
dataclass: its type, its constraint (``hasyncd.configschema``'s msgspec
``Meta``) and its default (no default: required).  Adding a key is one line.
An unknown section or key, a value out of range or a key file that others can
read stops the daemon with a one-line reason naming the key.  README.md
documents the same keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from hasyncd.configschema import (
    BOOL,
    Address,
    Choice,
    Int,
    List,
    Num,
    Pattern,
    address,
    convert_section,
)
from hasyncd.core.backlog import BACKLOG_MIB_DEFAULT, BACKLOG_S_DEFAULT
from hasyncd.errors import ConfigError
from hasyncd.secret import Secret

__all__ = ["Address", "Config", "ConfigError", "load", "parse", "parse_address"]

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
# Linux IFNAMSIZ - 1; "." and ".." are not interface names.
IFNAME_RE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._@:-]{1,15}\Z")
COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # an RFC 6265 token, kept short
MAX_PEERS = 7  # clusters of up to eight nodes
MAX_MONITORS = 32  # monitored interfaces: a gateway's uplinks, not every VLAN
PSK_BYTES = 32
MAX_PSK_FILE = 1024

NAME = Pattern(NAME_RE, "1..32 characters of [A-Za-z0-9._-]")
IFNAME = Pattern(IFNAME_RE, "a Linux interface name")
COOKIE_NAME = Pattern(COOKIE_NAME_RE, "1..64 characters of [A-Za-z0-9_-]")
PEERS = List(f'a list of 1..{MAX_PEERS} "host:port" addresses', min_length=1, max_length=MAX_PEERS)
MONITORS = List(f"a list of at most {MAX_MONITORS} interface names", max_length=MAX_MONITORS)


def parse_address(value: object, where: str) -> Address:
    """host:port or [v6]:port, with an IP literal host (no DNS at failover time)."""
    try:
        return address(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    name: Annotated[str, NAME]
    priority: Annotated[int, Int(0, 255)] = 100
    id: Annotated[int, Int(1, 65535)] = 0  # 0 (not set): parse derives it from the name
    override: Annotated[bool, BOOL] = False
    preempt_delay_s: Annotated[float, Num(0, 86400)] = 60.0
    uptime_margin_s: Annotated[float, Num(0, 86400)] = 300.0
    max_flaps: Annotated[int, Int(1, 1000)] = 3
    monitor: Annotated[tuple[Annotated[str, IFNAME], ...], MONITORS] = ()


@dataclass(frozen=True, kw_only=True)
class LinkConfig:
    listen: Address
    peers: Annotated[tuple[Address, ...], PEERS]
    psk_file: Path
    group_id: Annotated[int, Int(0, 255)] = 0
    heartbeat_interval_ms: Annotated[int, Int(10, 10000)] = 100
    heartbeat_lost_threshold: Annotated[int, Int(2, 100)] = 5
    hello_holddown_ms: Annotated[int, Int(0, 600000)] = 2000
    handshake_timeout_ms: Annotated[int, Int(100, 60000)] = 3000
    window_kib: Annotated[int, Int(64, 65536)] = 1024
    psk_next_file: Path | None = None  # the next cluster key during a rotation


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    socket: Path | None = None
    listen: Address | None = None
    max_body_mib: Annotated[int, Int(1, 1024)] = 64
    token_file: Path | None = None  # required with listen: the TCP API's bearer token


@dataclass(frozen=True, kw_only=True)
class SyncConfig:
    mode: Annotated[str, Choice("async", "sync")] = "async"
    sync_timeout_ms: Annotated[int, Int(1, 60000)] = 200


@dataclass(frozen=True, kw_only=True)
class PromotionConfig:
    esp_seq_margin: Annotated[int, Int(1, 2**32 - 1)] = 1 << 16
    handover_timeout_ms: Annotated[int, Int(100, 60000)] = 3000
    # The rate bound's factor over rate x (age of the last counter update +
    # detection time): 2 covers a send rate that doubled since the estimate.
    seq_safety_factor: Annotated[float, Num(1, 1000)] = 2.0
    inbound_window: Annotated[str, Choice("replicated", "advance")] = "replicated"
    # Rekeys and message-ID syncs released to the IKE daemon per second after
    # a promotion, and the spread of release times (fraction of a tick).
    rekey_rate: Annotated[float, Num(1, 100000)] = 200.0
    rekey_jitter: Annotated[float, Num(0, 1)] = 0.5


@dataclass(frozen=True, kw_only=True)
class HooksConfig:
    on_primary: Path | None = None
    on_secondary: Path | None = None
    on_fault: Path | None = None
    timeout_s: Annotated[float, Num(0.1, 3600)] = 10.0


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    tombstone_ttl_s: Annotated[int, Int(1, 7 * 86400)] = 3600


@dataclass(frozen=True, kw_only=True)
class ReplicationConfig:
    """``[replication]``: the primary's backlog for resuming secondaries (PROTOCOL.md 10.7)."""

    # Up to 4 GiB: a budget beyond that is memory better spent on a snapshot.
    backlog_mib: Annotated[int, Int(1, 4096)] = BACKLOG_MIB_DEFAULT
    # 0: resume only when nothing was written meanwhile.
    backlog_s: Annotated[int, Int(0, 86400)] = BACKLOG_S_DEFAULT


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: Annotated[str, Choice("debug", "info", "warning", "error")] = "info"


@dataclass(frozen=True, kw_only=True)
class PortalConfig:
    """``[portal]``: the reference web-mode portal (``hasyncd portal``), optional."""

    listen: Address
    tls_cert: Path | None = None
    tls_key: Path | None = None
    users_file: Path
    cookie_name: Annotated[str, COOKIE_NAME] = "HASYNCD_SESSION"
    # last_seen is refreshed at most every max(5 s, idle/10), so a session can end up
    # to that much early; at least 10 s keeps that below half the idle timeout.
    idle_timeout_s: Annotated[int, Int(10, 86400)] = 1800
    session_lifetime_s: Annotated[int, Int(10, 30 * 86400)] = 28800
    single_session: Annotated[bool, BOOL] = False


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    link: LinkConfig
    api: ApiConfig
    sync: SyncConfig
    promotion: PromotionConfig
    hooks: HooksConfig
    store: StoreConfig
    log: LogConfig
    psk: Secret
    portal: PortalConfig | None = None
    api_token: Secret | None = None  # the TCP API's bearer token ([api] token_file)
    psk_next: Secret | None = None  # the next link key ([link] psk_next_file), during a rotation
    replication: ReplicationConfig = ReplicationConfig()


# Each TOML section and the dataclass that declares its keys.
SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "link": LinkConfig,
    "api": ApiConfig,
    "sync": SyncConfig,
    "promotion": PromotionConfig,
    "hooks": HooksConfig,
    "store": StoreConfig,
    "replication": ReplicationConfig,
    "log": LogConfig,
    "portal": PortalConfig,
}
OPTIONAL_SECTIONS = frozenset({"portal"})  # absent: no defaults filled in, the field is None


def default_node_id(name: str) -> int:
    """A stable 16-bit id from the name; set node.id explicitly if two names collide."""
    return 1 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 65535


def load_psk(path: Path) -> Secret:
    """Read the shared link key; refuse files that others can read or write."""
    return load_secret(path, "[link].psk_file")


def load_secret(path: Path, where: str) -> Secret:
    """Read a 32-byte key file (the link key, the API token); refuse unsafe files."""
    try:
        raw = read_private_file(path, where, MAX_PSK_FILE)
    except FileNotFoundError:
        raise ConfigError(f"{where}: cannot open {path}: No such file or directory") from None
    return Secret(parse_psk(raw, str(path), where))


def read_private_file(path: Path, where: str, max_bytes: int) -> bytes:
    """A file only its owner may access (key, token, users file), read without following links.

    Refused: not a regular file, accessible to group or others, larger than ``max_bytes``.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the start-up.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{where}: {path} has mode {mode:04o}; group and others must have no "
                f"access (chmod 600 {path})"
            )
        if st.st_size > max_bytes:
            raise ConfigError(f"{where}: {path} is too large (over {max_bytes} bytes)")
        return os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)


def parse_psk(raw: bytes, path: str, where: str = "[link].psk_file") -> bytes:
    text = raw.strip()
    if len(text) == 2 * PSK_BYTES and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return bytes.fromhex(text.decode())
    if len(raw) == PSK_BYTES:
        return raw
    raise ConfigError(
        f"{where}: {path} must hold a 32-byte key as 64 hex characters (hasyncd keygen writes one)"
    )


def _check_hook(path: Path | None, where: str) -> None:
    if path is None:
        return
    if not path.is_absolute():
        raise ConfigError(f"{where}: hook paths must be absolute, got {path}")
    try:
        usable = path.is_file() and os.access(path, os.X_OK)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot check {str(path)[:100]}: {exc.strerror}") from None
    if not usable:
        raise ConfigError(f"{where}: {path} is not an executable file")


def _resolve(p: Path, path: Path) -> Path:
    """A relative path from the configuration is relative to the file's directory."""
    return p if p.is_absolute() else (path.parent / p).absolute()


def _resolve_opt(p: Path | None, path: Path) -> Path | None:
    return None if p is None else _resolve(p, path)


def parse(data: dict[str, Any], path: Path, *, load_key: bool = True) -> Config:
    for section in data:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
    values: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        if section in OPTIONAL_SECTIONS and section not in data:
            continue
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{section}] must be a table")
        values[section] = convert_section(section, cls, raw)

    node: NodeConfig = values["node"]
    if node.id == 0:
        node = replace(node, id=default_node_id(node.name))
    link: LinkConfig = values["link"]
    if len(set(link.peers)) != len(link.peers):
        raise ConfigError("[link].peers: lists an address twice")
    if link.listen in link.peers:
        raise ConfigError("[link].peers lists this node's own listen address")
    link = replace(
        link,
        psk_file=_resolve(link.psk_file, path),
        psk_next_file=_resolve_opt(link.psk_next_file, path),
    )
    api: ApiConfig = values["api"]
    if api.socket is None and api.listen is None:
        raise ConfigError("[api]: set socket, listen or both")
    if api.listen is not None and not ipaddress.ip_address(api.listen.host).is_loopback:
        raise ConfigError("[api].listen must be a loopback address: the API is local only")
    if api.listen is not None and api.token_file is None:
        raise ConfigError(
            "[api].listen needs [api].token_file: any local user can reach a TCP port "
            "(hasyncd keygen --token FILE writes one)"
        )
    api = replace(
        api, socket=_resolve_opt(api.socket, path), token_file=_resolve_opt(api.token_file, path)
    )
    replication: ReplicationConfig = values["replication"]
    ttl = values["store"].tombstone_ttl_s
    if "backlog_s" not in data.get("replication", {}):
        replication = replace(replication, backlog_s=min(BACKLOG_S_DEFAULT, ttl - 1))
    if replication.backlog_s >= ttl:
        raise ConfigError(
            "[replication].backlog_s must be below [store].tombstone_ttl_s: a resumed "
            "secondary is sent the tombstones of the deletes the backlog covers"
        )
    hooks: HooksConfig = values["hooks"]
    for name in ("on_primary", "on_secondary", "on_fault"):
        _check_hook(getattr(hooks, name), f"[hooks].{name}")
    portal = _portal(values["portal"], path) if "portal" in values else None
    psk = load_psk(link.psk_file) if load_key else Secret(bytes(PSK_BYTES))
    nxt = link.psk_next_file
    psk_next = load_secret(nxt, "[link].psk_next_file") if nxt is not None and load_key else None
    token = api.token_file
    api_token = load_secret(token, "[api].token_file") if token is not None and load_key else None
    return Config(
        path=path,
        node=node,
        link=link,
        api=api,
        sync=values["sync"],
        promotion=values["promotion"],
        hooks=hooks,
        store=values["store"],
        log=values["log"],
        replication=replication,
        psk=psk,
        portal=portal,
        api_token=api_token,
        psk_next=psk_next,
    )


def _portal(portal: PortalConfig, path: Path) -> PortalConfig:
    if (portal.tls_cert is None) != (portal.tls_key is None):
        raise ConfigError("[portal]: set both tls_cert and tls_key, or neither")
    return replace(
        portal,
        tls_cert=_resolve_opt(portal.tls_cert, path),
        tls_key=_resolve_opt(portal.tls_key, path),
        users_file=_resolve(portal.users_file, path),
    )


def load(path: Path | str, *, load_key: bool = True) -> Config:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse(data, path, load_key=load_key)


def write_key(path: Path, *, force: bool = False) -> None:
    """``hasyncd keygen``: 32 random bytes as hex, created with mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; use --force to replace it") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(PSK_BYTES).hex().encode() + b"\n")
    finally:
        os.close(fd)
