"""The TOML configuration: parsed, fully validated and frozen before anything starts.

Every key is declared once below with its type, range and default; an
unknown section or key, a value out of range or a key file that others can
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hasyncd.errors import ConfigError
from hasyncd.secret import Secret

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
IFNAME_RE = re.compile(r"[A-Za-z0-9._@:-]{1,15}\Z")  # Linux IFNAMSIZ - 1
MAX_PEERS = 7  # clusters of up to eight nodes
PSK_BYTES = 32
MAX_PSK_FILE = 1024


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: object, where: str) -> Address:
    """host:port or [v6]:port, with an IP literal host (no DNS at failover time)."""
    if not isinstance(value, str):
        raise ConfigError(f'{where}: expected "host:port", got {type(value).__name__}')
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", value)
    if not m:
        raise ConfigError(f"{where}: {value!r} is not host:port or [v6]:port with an IP address")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is out of range 1..65535")
    return Address(str(ip), port)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    priority: int
    id: int
    override: bool
    preempt_delay_s: float
    uptime_margin_s: float
    max_flaps: int
    monitor: tuple[str, ...]


@dataclass(frozen=True)
class LinkConfig:
    listen: Address
    peers: tuple[Address, ...]
    psk_file: Path
    group_id: int
    heartbeat_interval_ms: int
    heartbeat_lost_threshold: int
    hello_holddown_ms: int
    handshake_timeout_ms: int
    window_kib: int


@dataclass(frozen=True)
class ApiConfig:
    socket: Path | None
    listen: Address | None
    max_body_mib: int
    token_file: Path | None = None  # required with listen: the TCP API's bearer token


@dataclass(frozen=True)
class SyncConfig:
    mode: str
    sync_timeout_ms: int


@dataclass(frozen=True)
class PromotionConfig:
    esp_seq_margin: int
    handover_timeout_ms: int
    seq_safety_factor: float = 2.0
    inbound_window: str = "replicated"
    rekey_rate: float = 200.0
    rekey_jitter: float = 0.5


@dataclass(frozen=True)
class HooksConfig:
    on_primary: Path | None
    on_secondary: Path | None
    on_fault: Path | None
    timeout_s: float


@dataclass(frozen=True)
class StoreConfig:
    tombstone_ttl_s: int


@dataclass(frozen=True)
class LogConfig:
    level: str


@dataclass(frozen=True)
class PortalConfig:
    """``[portal]``: the reference web-mode portal (``hasyncd portal``), optional."""

    listen: Address
    tls_cert: Path | None
    tls_key: Path | None
    users_file: Path
    cookie_name: str
    idle_timeout_s: int
    session_lifetime_s: int
    single_session: bool


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


# --- value checkers -----------------------------------------------------------------

Check = Callable[[Any, str], Any]
REQUIRED = object()


def _int(lo: int, hi: int) -> Check:
    def check(v: Any, where: str) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise ConfigError(f"{where}: expected an integer in {lo}..{hi}, got {v!r}")
        return v

    return check


def _num(lo: float, hi: float) -> Check:
    def check(v: Any, where: str) -> float:
        if type(v) not in (int, float) or not lo <= v <= hi:
            raise ConfigError(f"{where}: expected a number in {lo:g}..{hi:g}, got {v!r}")
        return float(v)

    return check


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not NAME_RE.match(v):
        raise ConfigError(f"{where}: expected 1..32 characters of [A-Za-z0-9._-], got {v!r}")
    return v


def _choice(*choices: str) -> Check:
    def check(v: Any, where: str) -> str:
        if v not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {v!r}")
        return str(v)

    return check


def _path(v: Any, where: str) -> Path:
    if not isinstance(v, str) or not v or "\x00" in v:
        raise ConfigError(f"{where}: expected a file path")
    return Path(v)


def _address(v: Any, where: str) -> Address:
    return parse_address(v, where)


def _peers(v: Any, where: str) -> tuple[Address, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_PEERS:
        raise ConfigError(f'{where}: expected a list of 1..{MAX_PEERS} "host:port" addresses')
    out = tuple(parse_address(x, f"{where}[{i}]") for i, x in enumerate(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: lists an address twice")
    return out


COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # an RFC 6265 token, kept short


def _cookie_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not COOKIE_NAME_RE.match(v):
        raise ConfigError(f"{where}: expected 1..64 characters of [A-Za-z0-9_-], got {v!r}")
    return v


def _monitors(v: Any, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > 32:
        raise ConfigError(f"{where}: expected a list of at most 32 interface names")
    for i, x in enumerate(v):
        if not isinstance(x, str) or not IFNAME_RE.match(x) or x in (".", ".."):
            raise ConfigError(f"{where}[{i}]: {x!r} is not a Linux interface name")
    return tuple(v)


SCHEMA: dict[str, dict[str, tuple[Check, Any]]] = {
    "node": {
        "name": (_name, REQUIRED),
        "priority": (_int(0, 255), 100),
        "id": (_int(1, 65535), None),
        "override": (_bool, False),
        "preempt_delay_s": (_num(0, 86400), 60.0),
        "uptime_margin_s": (_num(0, 86400), 300.0),
        "max_flaps": (_int(1, 1000), 3),
        "monitor": (_monitors, ()),
    },
    "link": {
        "listen": (_address, REQUIRED),
        "peers": (_peers, REQUIRED),
        "psk_file": (_path, REQUIRED),
        "group_id": (_int(0, 255), 0),
        "heartbeat_interval_ms": (_int(10, 10000), 100),
        "heartbeat_lost_threshold": (_int(2, 100), 5),
        "hello_holddown_ms": (_int(0, 600000), 2000),
        "handshake_timeout_ms": (_int(100, 60000), 3000),
        "window_kib": (_int(64, 65536), 1024),
    },
    "api": {
        "socket": (_path, None),
        "listen": (_address, None),
        "max_body_mib": (_int(1, 1024), 64),
        "token_file": (_path, None),
    },
    "sync": {
        "mode": (_choice("async", "sync"), "async"),
        "sync_timeout_ms": (_int(1, 60000), 200),
    },
    "promotion": {
        "esp_seq_margin": (_int(1, 2**32 - 1), 1 << 16),
        "handover_timeout_ms": (_int(100, 60000), 3000),
        # The rate bound's factor over rate x (age of the last counter update +
        # detection time): 2 covers a send rate that doubled since the estimate.
        "seq_safety_factor": (_num(1, 1000), 2.0),
        "inbound_window": (_choice("replicated", "advance"), "replicated"),
        # Rekeys and message-ID syncs released to the IKE daemon per second after
        # a promotion, and the spread of release times (fraction of a tick).
        "rekey_rate": (_num(1, 100000), 200.0),
        "rekey_jitter": (_num(0, 1), 0.5),
    },
    "hooks": {
        "on_primary": (_path, None),
        "on_secondary": (_path, None),
        "on_fault": (_path, None),
        "timeout_s": (_num(0.1, 3600), 10.0),
    },
    "store": {
        "tombstone_ttl_s": (_int(1, 7 * 86400), 3600),
    },
    "log": {
        "level": (_choice("debug", "info", "warning", "error"), "info"),
    },
    "portal": {
        "listen": (_address, REQUIRED),
        "tls_cert": (_path, None),
        "tls_key": (_path, None),
        "users_file": (_path, REQUIRED),
        "cookie_name": (_cookie_name, "HASYNCD_SESSION"),
        # last_seen is refreshed at most every max(5 s, idle/10), so a session can end up
        # to that much early; at least 10 s keeps that below half the idle timeout.
        "idle_timeout_s": (_int(10, 86400), 1800),
        "session_lifetime_s": (_int(10, 30 * 86400), 28800),
        "single_session": (_bool, False),
    },
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


def parse(data: dict[str, Any], path: Path, *, load_key: bool = True) -> Config:
    for section in data:
        if section not in SCHEMA:
            raise ConfigError(f"unknown section [{section}]")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        if section in OPTIONAL_SECTIONS and section not in data:
            continue
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key in raw:
            if key not in keys:
                raise ConfigError(f"[{section}]: unknown key {key!r}")
        out: dict[str, Any] = {}
        for key, (check, default) in keys.items():
            where = f"[{section}].{key}"
            if key in raw:
                out[key] = check(raw[key], where)
            elif default is REQUIRED:
                raise ConfigError(f"{where} is required")
            else:
                out[key] = default
        values[section] = out

    node = values["node"]
    if node["id"] is None:
        node["id"] = default_node_id(node["name"])
    link = values["link"]
    if link["listen"] in link["peers"]:
        raise ConfigError("[link].peers lists this node's own listen address")
    if not link["psk_file"].is_absolute():
        link["psk_file"] = (path.parent / link["psk_file"]).absolute()
    api = values["api"]
    if api["socket"] is None and api["listen"] is None:
        raise ConfigError("[api]: set socket, listen or both")
    if api["socket"] is not None and not api["socket"].is_absolute():
        api["socket"] = (path.parent / api["socket"]).absolute()
    if api["listen"] is not None and not ipaddress.ip_address(api["listen"].host).is_loopback:
        raise ConfigError("[api].listen must be a loopback address: the API is local only")
    if api["listen"] is not None and api["token_file"] is None:
        raise ConfigError(
            "[api].listen needs [api].token_file: any local user can reach a TCP port "
            "(hasyncd keygen --token FILE writes one)"
        )
    if api["token_file"] is not None and not api["token_file"].is_absolute():
        api["token_file"] = (path.parent / api["token_file"]).absolute()
    hooks = values["hooks"]
    for name in ("on_primary", "on_secondary", "on_fault"):
        _check_hook(hooks[name], f"[hooks].{name}")
    portal = _portal(values["portal"], path) if "portal" in values else None
    psk = load_psk(link["psk_file"]) if load_key else Secret(bytes(PSK_BYTES))
    token = api["token_file"]
    api_token = load_secret(token, "[api].token_file") if token is not None and load_key else None
    return Config(
        path=path,
        node=NodeConfig(**node),
        link=LinkConfig(**link),
        api=ApiConfig(**api),
        sync=SyncConfig(**values["sync"]),
        promotion=PromotionConfig(**values["promotion"]),
        hooks=HooksConfig(**hooks),
        store=StoreConfig(**values["store"]),
        log=LogConfig(**values["log"]),
        psk=psk,
        portal=portal,
        api_token=api_token,
    )


def _portal(values: dict[str, Any], path: Path) -> PortalConfig:
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("[portal]: set both tls_cert and tls_key, or neither")
    for key in ("tls_cert", "tls_key", "users_file"):
        if values[key] is not None and not values[key].is_absolute():
            values[key] = (path.parent / values[key]).absolute()
    return PortalConfig(**values)


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
