"""Unit tests for the configuration loader, the key file, Secret and the config CLI commands."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasyncd import config
from hasyncd.config import (
    MAX_PEERS,
    Address,
    Config,
    default_node_id,
    load,
    load_psk,
    parse,
    parse_address,
    parse_psk,
    write_key,
)
from hasyncd.core.backlog import BACKLOG_MIB_DEFAULT, BACKLOG_S_DEFAULT
from hasyncd.daemon.shell import core_settings
from hasyncd.errors import ConfigError
from hasyncd.policy import POLICY
from hasyncd.secret import Secret

REPO = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
    return "\n".join(lines) + "\n"


def make_key(path: Path) -> Path:
    write_key(path)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return make_key(tmp_path / "link.key")


@pytest.fixture
def base(tmp_path: Path, key_file: Path) -> dict[str, Any]:
    return {
        "node": {"name": "gw-a"},
        "link": {
            "listen": "127.0.0.1:7411",
            "peers": ["127.0.0.2:7411"],
            "psk_file": str(key_file),
        },
        "api": {"socket": str(tmp_path / "api.sock")},
    }


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "hasyncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(data))
    return path


def load_data(tmp_path: Path, data: dict[str, Any]) -> Config:
    return load(write_config(tmp_path, data))


def config_error(tmp_path: Path, data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_data(tmp_path, data)
    msg = info.value.message
    assert "\n" not in msg
    assert info.value.code == "config"
    return info.value


def with_value(data: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.setdefault(section, {})[key] = value
    return out


# --- valid configurations ---------------------------------------------------------------------


def test_minimal_config_and_defaults(tmp_path: Path, base: dict[str, Any], key_file: Path) -> None:
    cfg = load_data(tmp_path, base)
    assert cfg.path == tmp_path / "hasyncd.toml"
    assert cfg.node.name == "gw-a"
    assert cfg.node.priority == 100
    assert cfg.node.id == default_node_id("gw-a")
    assert cfg.node.override is False
    assert cfg.node.preempt_delay_s == 60.0
    assert cfg.node.uptime_margin_s == 300.0
    assert cfg.node.max_flaps == 3
    assert cfg.node.monitor == ()
    assert cfg.link.listen == Address("127.0.0.1", 7411)
    assert cfg.link.peers == (Address("127.0.0.2", 7411),)
    assert cfg.link.psk_file == key_file
    assert cfg.link.group_id == 0
    assert cfg.link.heartbeat_interval_ms == 100
    assert cfg.link.heartbeat_lost_threshold == 5
    assert cfg.link.hello_holddown_ms == 2000
    assert cfg.link.handshake_timeout_ms == 3000
    assert cfg.link.window_kib == 1024
    assert cfg.api.socket == tmp_path / "api.sock"
    assert cfg.api.listen is None
    assert cfg.api.max_body_mib == 64
    assert cfg.sync.mode == "async"
    assert cfg.sync.sync_timeout_ms == 200
    assert cfg.promotion.esp_seq_margin == 65536
    assert cfg.promotion.handover_timeout_ms == 3000
    assert cfg.hooks.on_primary is None
    assert cfg.hooks.on_secondary is None
    assert cfg.hooks.on_fault is None
    assert cfg.hooks.timeout_s == 10.0
    assert cfg.store.tombstone_ttl_s == 3600
    assert cfg.log.level == "info"
    assert cfg.psk.reveal() == bytes.fromhex(key_file.read_text())
    assert len(cfg.psk.reveal()) == 32


def test_full_config(tmp_path: Path, base: dict[str, Any]) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    data = copy.deepcopy(base)
    data["node"].update(
        priority=0,
        id=65535,
        override=True,
        preempt_delay_s=0,
        uptime_margin_s=86400,
        max_flaps=1000,
        monitor=["eth0", "bond0.100", "wg@x:1", "a" * 15],
    )
    data["link"].update(
        listen="[::1]:7411",
        peers=["[::2]:7411", "10.0.0.2:7411", "[fd00::3]:1"]
        + [f"10.0.1.{i}:65535" for i in range(4)],
        group_id=255,
        heartbeat_interval_ms=10,
        heartbeat_lost_threshold=100,
        hello_holddown_ms=0,
        handshake_timeout_ms=60000,
        window_kib=64,
    )
    token = tmp_path / "api-token"
    token.write_text("ab" * 32)
    token.chmod(0o600)
    data["api"].update(listen="[::1]:8080", max_body_mib=1024, token_file=str(token))
    data["sync"] = {"mode": "sync", "sync_timeout_ms": 60000}
    data["promotion"] = {"esp_seq_margin": 2**32 - 1, "handover_timeout_ms": 100}
    data["hooks"] = {
        "on_primary": str(hook),
        "on_secondary": str(hook),
        "on_fault": str(hook),
        "timeout_s": 0.1,
    }
    data["store"] = {"tombstone_ttl_s": 7 * 86400}
    data["log"] = {"level": "debug"}
    cfg = load_data(tmp_path, data)
    assert cfg.node.id == 65535
    assert cfg.node.priority == 0
    assert cfg.node.override is True
    assert cfg.node.preempt_delay_s == 0.0
    assert type(cfg.node.preempt_delay_s) is float
    assert cfg.node.monitor == ("eth0", "bond0.100", "wg@x:1", "a" * 15)
    assert cfg.link.listen == Address("::1", 7411)
    assert str(cfg.link.listen) == "[::1]:7411"
    assert len(cfg.link.peers) == MAX_PEERS
    assert str(cfg.link.peers[1]) == "10.0.0.2:7411"
    assert cfg.api.listen == Address("::1", 8080)
    assert cfg.sync.mode == "sync"
    assert cfg.promotion.esp_seq_margin == 2**32 - 1
    assert cfg.hooks.on_fault == hook
    assert cfg.hooks.timeout_s == 0.1
    assert cfg.store.tombstone_ttl_s == 7 * 86400
    assert cfg.log.level == "debug"


def test_config_is_frozen(tmp_path: Path, base: dict[str, Any]) -> None:
    cfg = load_data(tmp_path, base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node = cfg.node  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.link.group_id = 3  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    make_key(etc / "link.key")
    data = {
        "node": {"name": "gw-b"},
        "link": {"listen": "127.0.0.1:7411", "peers": ["127.0.0.2:7411"], "psk_file": "link.key"},
        "api": {"socket": "run/api.sock"},
    }
    path = write_config(etc, data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(path)
    assert cfg.link.psk_file == etc / "link.key"
    assert cfg.link.psk_file.is_absolute()
    assert cfg.api.socket == etc / "run" / "api.sock"


def test_explicit_node_id_overrides_the_default(tmp_path: Path, base: dict[str, Any]) -> None:
    cfg = load_data(tmp_path, with_value(base, "node", "id", 7))
    assert cfg.node.id == 7


def test_parse_without_the_key(tmp_path: Path) -> None:
    data = {
        "node": {"name": "n"},
        "link": {
            "listen": "127.0.0.1:1",
            "peers": ["127.0.0.1:2"],
            "psk_file": str(tmp_path / "missing.key"),
        },
        "api": {"listen": "127.0.0.1:8080", "token_file": str(tmp_path / "missing.token")},
    }
    cfg = parse(data, tmp_path / "x.toml", load_key=False)
    assert cfg.psk == Secret(bytes(32))
    with pytest.raises(ConfigError, match=r"\[link\]\.psk_file"):
        parse(data, tmp_path / "x.toml")


def test_config_repr_does_not_reveal_the_key(tmp_path: Path, base: dict[str, Any]) -> None:
    cfg = load_data(tmp_path, base)
    secret_hex = cfg.psk.reveal().hex()
    text = repr(cfg) + str(cfg)
    assert secret_hex not in text
    assert secret_hex[:16] not in text
    assert repr(cfg.psk.reveal()) not in text
    assert "Secret(<redacted>)" in text


# --- errors: every one names the key ---------------------------------------------------------

# (section, key, value)
BAD_VALUES: list[tuple[str, str, Any]] = [
    ("node", "name", ""),
    ("node", "name", "x" * 33),
    ("node", "name", "gw a"),
    ("node", "name", "gw/a"),
    ("node", "name", 5),
    ("node", "priority", 256),
    ("node", "priority", -1),
    ("node", "priority", "100"),
    ("node", "priority", 100.0),
    ("node", "priority", True),
    ("node", "id", 0),
    ("node", "id", 65536),
    ("node", "id", -1),
    ("node", "override", "yes"),
    ("node", "override", 1),
    ("node", "preempt_delay_s", -1),
    ("node", "preempt_delay_s", 86401),
    ("node", "preempt_delay_s", "60"),
    ("node", "preempt_delay_s", True),
    ("node", "preempt_delay_s", math.nan),
    ("node", "preempt_delay_s", math.inf),
    ("node", "uptime_margin_s", -0.5),
    ("node", "max_flaps", 0),
    ("node", "max_flaps", 1001),
    ("node", "monitor", "eth0"),
    ("node", "monitor", [5]),
    ("node", "monitor", ["a" * 16]),
    ("node", "monitor", ["."]),
    ("node", "monitor", [".."]),
    ("node", "monitor", ["eth 0"]),
    ("node", "monitor", ["eth/0"]),
    ("node", "monitor", [""]),
    ("node", "monitor", [f"eth{i}" for i in range(33)]),
    ("link", "listen", 7411),
    ("link", "listen", "localhost:7411"),
    ("link", "peers", "127.0.0.2:7411"),
    ("link", "peers", []),
    ("link", "peers", [f"10.0.0.{i}:7411" for i in range(1, 9)]),
    ("link", "peers", [7411]),
    ("link", "psk_file", 5),
    ("link", "psk_file", ""),
    ("link", "group_id", -1),
    ("link", "group_id", 256),
    ("link", "group_id", "0"),
    ("link", "heartbeat_interval_ms", 5),
    ("link", "heartbeat_interval_ms", 9),
    ("link", "heartbeat_interval_ms", 10001),
    ("link", "heartbeat_lost_threshold", 1),
    ("link", "heartbeat_lost_threshold", 101),
    ("link", "hello_holddown_ms", -1),
    ("link", "hello_holddown_ms", 600001),
    ("link", "handshake_timeout_ms", 99),
    ("link", "handshake_timeout_ms", 60001),
    ("link", "window_kib", 63),
    ("link", "window_kib", 65537),
    ("api", "socket", 5),
    ("api", "socket", ""),
    ("api", "listen", "127.0.0.1"),
    ("api", "max_body_mib", 0),
    ("api", "max_body_mib", 1025),
    ("sync", "mode", "fast"),
    ("sync", "mode", "SYNC"),
    ("sync", "mode", 1),
    ("sync", "mode", ["sync"]),
    ("sync", "sync_timeout_ms", 0),
    ("sync", "sync_timeout_ms", 60001),
    ("promotion", "esp_seq_margin", 0),
    ("promotion", "esp_seq_margin", 2**32),
    ("promotion", "handover_timeout_ms", 50),
    ("promotion", "handover_timeout_ms", 60001),
    ("hooks", "on_primary", 5),
    ("hooks", "on_secondary", ""),
    ("hooks", "on_fault", ["/bin/true"]),
    ("hooks", "timeout_s", 0.05),
    ("hooks", "timeout_s", 3601),
    ("hooks", "timeout_s", "10"),
    ("store", "tombstone_ttl_s", 0),
    ("store", "tombstone_ttl_s", 7 * 86400 + 1),
    ("log", "level", "trace"),
    ("log", "level", "INFO"),
    ("log", "level", 3),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_values_name_the_key(
    tmp_path: Path, base: dict[str, Any], section: str, key: str, value: Any
) -> None:
    err = config_error(tmp_path, with_value(base, section, key, value))
    assert f"[{section}].{key}" in err.message


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_values_are_refused_by_parse_too(
    tmp_path: Path, base: dict[str, Any], section: str, key: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"\[{section}\]\.{key}"):
        parse(with_value(base, section, key, value), tmp_path / "x.toml", load_key=False)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("node", "priority", 255),
        ("node", "priority", 0),
        ("node", "id", 1),
        ("node", "preempt_delay_s", 86400),
        ("node", "preempt_delay_s", 0.5),
        ("link", "group_id", 0),
        ("link", "heartbeat_interval_ms", 10),
        ("link", "heartbeat_interval_ms", 10000),
        ("link", "peers", [f"10.0.0.{i}:7411" for i in range(1, 8)]),
        ("hooks", "timeout_s", 3600),
        ("store", "tombstone_ttl_s", 1),
        ("log", "level", "warning"),
        ("log", "level", "error"),
    ],
)
def test_boundary_values_are_accepted(
    tmp_path: Path, base: dict[str, Any], section: str, key: str, value: Any
) -> None:
    cfg = load_data(tmp_path, with_value(base, section, key, value))
    got = getattr(getattr(cfg, section), key)
    if key == "peers":
        assert [str(a) for a in got] == value
    else:
        assert got == value


def test_unknown_section(tmp_path: Path, base: dict[str, Any]) -> None:
    data = dict(base, cluster={"x": 1})
    err = config_error(tmp_path, data)
    assert "[cluster]" in err.message
    assert "unknown section" in err.message


def test_unknown_top_level_key(tmp_path: Path, base: dict[str, Any]) -> None:
    data = dict(base, debug=True)
    err = config_error(tmp_path, data)
    assert "debug" in err.message


@pytest.mark.parametrize(
    ("section", "key"),
    [("node", "colour"), ("link", "psk"), ("api", "sock"), ("hooks", "on_master"), ("log", "lvl")],
)
def test_unknown_key(tmp_path: Path, base: dict[str, Any], section: str, key: str) -> None:
    err = config_error(tmp_path, with_value(base, section, key, 1))
    assert f"[{section}]" in err.message
    assert key in err.message
    assert "unknown key" in err.message


def test_section_that_is_not_a_table(tmp_path: Path, base: dict[str, Any]) -> None:
    data = dict(base, sync=5)
    err = config_error(tmp_path, data)
    assert "[sync]" in err.message


@pytest.mark.parametrize(
    ("section", "key"),
    [("node", "name"), ("link", "listen"), ("link", "peers"), ("link", "psk_file")],
)
def test_required_keys(tmp_path: Path, base: dict[str, Any], section: str, key: str) -> None:
    data = copy.deepcopy(base)
    del data[section][key]
    err = config_error(tmp_path, data)
    assert err.message == f"[{section}].{key} is required"


def test_missing_node_section(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    del data["node"]
    assert config_error(tmp_path, data).message == "[node].name is required"


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "localhost:7411",
        "gw.example.net:7411",
        "127.0.0.1",
        "127.0.0.1:",
        ":7411",
        "127.0.0.1:70000",
        "127.0.0.1:65536",
        "127.0.0.1:0",
        "127.0.0.1:123456",
        "::1:7411",
        "[::1]",
        "[::1]7411",
        "[fe80::1%eth0]:7411",
        "[gw.example.net]:7411",
        "1.2.3.4.5:80",
        "256.1.1.1:80",
        "10.0.0.1:80 ",
        " 10.0.0.1:80",
        "10.0.0.1:-1",
        "",
    ],
)
def test_bad_addresses(tmp_path: Path, base: dict[str, Any], value: str) -> None:
    err = config_error(tmp_path, with_value(base, "link", "listen", value))
    assert "[link].listen" in err.message
    err = config_error(tmp_path, with_value(base, "link", "peers", ["127.0.0.9:1", value]))
    assert "[link].peers[1]" in err.message


@pytest.mark.parametrize(
    ("value", "host", "port", "text"),
    [
        ("[::1]:7411", "::1", 7411, "[::1]:7411"),
        ("[0:0::1]:7411", "::1", 7411, "[::1]:7411"),
        ("[2001:DB8::1]:1", "2001:db8::1", 1, "[2001:db8::1]:1"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
        ("10.0.0.1:07411", "10.0.0.1", 7411, "10.0.0.1:7411"),
    ],
)
def test_good_addresses(value: str, host: str, port: int, text: str) -> None:
    addr = parse_address(value, "[link].listen")
    assert addr == Address(host, port)
    assert str(addr) == text


def test_port_out_of_range_message_names_the_port() -> None:
    with pytest.raises(ConfigError) as info:
        parse_address("127.0.0.1:70000", "[link].listen")
    assert "[link].listen" in info.value.message
    assert "70000" in info.value.message


@pytest.mark.parametrize(
    "peers",
    [
        ["127.0.0.2:7411", "127.0.0.2:7411"],
        ["[::2]:7411", "[0::2]:7411"],  # the same address written twice
        ["127.0.0.1:7411"],  # own listen address
        ["127.0.0.3:7411", "127.0.0.1:7411"],
    ],
)
def test_bad_peer_lists(tmp_path: Path, base: dict[str, Any], peers: list[str]) -> None:
    err = config_error(tmp_path, with_value(base, "link", "peers", peers))
    assert "[link].peers" in err.message


def test_own_listen_in_peers_matches_canonical_forms(tmp_path: Path, base: dict[str, Any]) -> None:
    data = with_value(base, "link", "listen", "[::1]:7411")
    data["link"]["peers"] = ["[0:0:0:0:0:0:0:1]:7411"]
    err = config_error(tmp_path, data)
    assert "[link].peers" in err.message
    assert "own listen" in err.message


def test_same_host_other_port_is_a_peer(tmp_path: Path, base: dict[str, Any]) -> None:
    cfg = load_data(tmp_path, with_value(base, "link", "peers", ["127.0.0.1:7412"]))
    assert cfg.link.peers == (Address("127.0.0.1", 7412),)


# --- api ---------------------------------------------------------------------------------------


def test_api_needs_socket_or_listen(tmp_path: Path, base: dict[str, Any]) -> None:
    data = copy.deepcopy(base)
    data["api"] = {"max_body_mib": 10}
    assert "[api]" in config_error(tmp_path, data).message
    del data["api"]
    assert "[api]" in config_error(tmp_path, data).message


@pytest.mark.parametrize(
    "listen", ["10.0.0.1:8080", "0.0.0.0:8080", "[::]:8080", "[2001:db8::1]:1"]
)
def test_api_listen_must_be_loopback(tmp_path: Path, base: dict[str, Any], listen: str) -> None:
    err = config_error(tmp_path, with_value(base, "api", "listen", listen))
    assert "[api].listen" in err.message
    assert "loopback" in err.message


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.9.9.9:8080", "[::1]:8080"])
def test_api_listen_on_loopback(tmp_path: Path, base: dict[str, Any], listen: str) -> None:
    data = copy.deepcopy(base)
    token = tmp_path / "api-token"
    token.write_text("cd" * 32)
    token.chmod(0o600)
    data["api"] = {"listen": listen, "token_file": str(token)}
    cfg = load_data(tmp_path, data)
    assert cfg.api.socket is None
    assert str(cfg.api.listen) == listen
    assert cfg.api_token is not None
    assert cfg.api_token.reveal() == bytes.fromhex("cd" * 32)


# --- the key file --------------------------------------------------------------------------------


def test_missing_psk_file(tmp_path: Path, base: dict[str, Any]) -> None:
    data = with_value(base, "link", "psk_file", str(tmp_path / "nope.key"))
    err = config_error(tmp_path, data)
    assert err.message.startswith("[link].psk_file")
    assert "nope.key" in err.message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601, 0o777])
def test_psk_file_readable_by_others_is_refused(
    tmp_path: Path, base: dict[str, Any], key_file: Path, mode: int
) -> None:
    key_file.chmod(mode)
    err = config_error(tmp_path, base)
    assert err.message.startswith("[link].psk_file")
    assert f"{mode:04o}" in err.message
    assert f"chmod 600 {key_file}" in err.message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_psk_file_modes_are_accepted(
    tmp_path: Path, base: dict[str, Any], key_file: Path, mode: int
) -> None:
    key_file.chmod(mode)
    assert len(load_data(tmp_path, base).psk.reveal()) == 32


def _write_private(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello",
        b"ab" * 31 + b"\n",  # 62 hex characters
        b"ab" * 32 + b"a\n",  # 65 hex characters
        b"zz" * 32 + b"\n",  # 64 characters, not hex
        b"ab" * 16 + b" " + b"ab" * 16,
        b"0x" + b"ab" * 31,
        b"\x01" * 31,
        b"\x01" * 33,
        b"ab" * 64,
    ],
)
def test_psk_file_with_wrong_content(tmp_path: Path, base: dict[str, Any], content: bytes) -> None:
    key = _write_private(tmp_path / "link.key", content)
    err = config_error(tmp_path, base)
    assert err.message.startswith("[link].psk_file")
    assert str(key) in err.message
    assert "64 hex" in err.message
    if len(content) > 4:
        assert content.strip().decode("latin-1") not in err.message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"ab" * 32, bytes.fromhex("ab" * 32)),
        (b"ab" * 32 + b"\n", bytes.fromhex("ab" * 32)),
        (b"  " + b"AB" * 32 + b"\r\n", bytes.fromhex("ab" * 32)),
        (bytes(range(32)), bytes(range(32))),  # a raw 32-byte key
        (b"k" * 32, b"k" * 32),
    ],
)
def test_psk_file_formats(
    tmp_path: Path, base: dict[str, Any], content: bytes, expected: bytes
) -> None:
    _write_private(tmp_path / "link.key", content)
    assert load_data(tmp_path, base).psk.reveal() == expected
    assert parse_psk(content, "x") == expected


def test_psk_file_too_large(tmp_path: Path, base: dict[str, Any]) -> None:
    _write_private(tmp_path / "link.key", b"ab" * 32 + b"\n" * 2000)
    err = config_error(tmp_path, base)
    assert err.message.startswith("[link].psk_file")
    assert "too large" in err.message


def test_psk_symlink_is_refused(tmp_path: Path, base: dict[str, Any], key_file: Path) -> None:
    link = tmp_path / "link-to-key"
    link.symlink_to(key_file)
    err = config_error(tmp_path, with_value(base, "link", "psk_file", str(link)))
    assert err.message.startswith("[link].psk_file")
    assert "link-to-key" in err.message
    with pytest.raises(ConfigError):
        load_psk(link)
    assert len(load_psk(key_file).reveal()) == 32


def test_psk_directory_is_refused(tmp_path: Path, base: dict[str, Any]) -> None:
    d = tmp_path / "keydir"
    d.mkdir(mode=0o700)
    err = config_error(tmp_path, with_value(base, "link", "psk_file", str(d)))
    assert err.message.startswith("[link].psk_file")
    assert "regular file" in err.message


def test_psk_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO at psk_file must be refused as "not a regular file", not hang the daemon.

    load_psk opens with O_RDONLY | O_NOFOLLOW but without O_NONBLOCK, so opening a
    FIFO blocks until some process opens it for writing; the S_ISREG check never runs.
    """
    fifo = tmp_path / "link.key"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | str] = []

    def target() -> None:
        try:
            load_psk(fifo)
            outcome.append("loaded")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(2.0)
    blocked = thread.is_alive()
    if blocked:  # release the blocked open() so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5.0)
    assert not blocked, "load_psk() blocked opening a FIFO instead of refusing it"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConfigError)


# --- hooks --------------------------------------------------------------------------------------


def _hook(tmp_path: Path, mode: int, name: str = "hook.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("name", ["on_primary", "on_secondary", "on_fault"])
def test_hook_must_be_executable(tmp_path: Path, base: dict[str, Any], name: str) -> None:
    hook = _hook(tmp_path, 0o644)
    err = config_error(tmp_path, with_value(base, "hooks", name, str(hook)))
    assert err.message.startswith(f"[hooks].{name}")
    assert "executable" in err.message
    hook.chmod(0o755)
    assert getattr(load_data(tmp_path, with_value(base, "hooks", name, str(hook))).hooks, name)


@pytest.mark.parametrize("name", ["on_primary", "on_secondary", "on_fault"])
def test_hook_must_be_absolute(tmp_path: Path, base: dict[str, Any], name: str) -> None:
    _hook(tmp_path, 0o755)
    err = config_error(tmp_path, with_value(base, "hooks", name, "hook.sh"))
    assert err.message.startswith(f"[hooks].{name}")
    assert "absolute" in err.message


@pytest.mark.parametrize("target", ["missing.sh", "a-directory"])
def test_hook_must_be_an_existing_file(tmp_path: Path, base: dict[str, Any], target: str) -> None:
    (tmp_path / "a-directory").mkdir(mode=0o755)
    err = config_error(tmp_path, with_value(base, "hooks", "on_fault", str(tmp_path / target)))
    assert err.message.startswith("[hooks].on_fault")


def test_hook_path_too_long_is_a_config_error(tmp_path: Path, base: dict[str, Any]) -> None:
    """An unusable hook path must give a ConfigError, not an OSError traceback.

    _check_hook calls Path.is_file(), which on Python 3.11 re-raises errors other than
    ENOENT/ENOTDIR/EBADF/ELOOP: a name longer than NAME_MAX (ENAMETOOLONG) escapes parse().
    """
    data = with_value(base, "hooks", "on_primary", "/" + "h" * 300)
    error: ConfigError | None = None
    try:
        load_data(tmp_path, data)
    except ConfigError as exc:
        error = exc
    except OSError as exc:
        pytest.fail(f"OSError escaped the config loader: {exc!r}")
    assert error is not None, "a 300-character hook name was accepted"
    assert error.message.startswith("[hooks].on_primary")


# --- the file itself ----------------------------------------------------------------------------


def test_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_config_file_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[node\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)
    path.write_bytes(b'[node]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


# --- default node id ----------------------------------------------------------------------------


def test_default_node_id_is_stable() -> None:
    # Values pinned: the id is on the wire, it must not change between releases or runs.
    assert default_node_id("gw-a") == 47913
    assert default_node_id("gw-b") == 50557
    assert default_node_id("node1") == 51731
    code = "from hasyncd.config import default_node_id as f; print(f('gw-a'), f('gw-b'))"
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=REPO,
            timeout=60,
        )
        outs.add(out.stdout.strip())
    assert outs == {"47913 50557"}


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(name=st.from_regex(config.NAME_RE.pattern.removesuffix(r"\Z"), fullmatch=True))
def test_default_node_id_range(name: str) -> None:
    nid = default_node_id(name)
    assert 1 <= nid <= 65535
    assert nid == default_node_id(name)


# --- write_key ----------------------------------------------------------------------------------


def test_write_key_creates_a_private_hex_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    old = os.umask(0)
    try:
        write_key(path)
    finally:
        os.umask(old)
    st_ = path.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65
    assert text.endswith("\n")
    raw = bytes.fromhex(text.strip())
    assert len(raw) == 32
    assert load_psk(path).reveal() == raw
    other = tmp_path / "k2"
    write_key(other)
    assert other.read_text() != text


def test_write_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="exists"):
        write_key(path)
    assert path.read_text() == "keep me"


def test_write_key_force_replaces_and_fixes_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("old content that is longer than a key file" * 3)
    path.chmod(0o644)
    write_key(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 65
    assert len(load_psk(path).reveal()) == 32


def test_write_key_does_not_follow_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("victim")
    target.chmod(0o644)
    link = tmp_path / "k"
    link.symlink_to(target)
    with pytest.raises(ConfigError):
        write_key(link)
    with pytest.raises(ConfigError):
        write_key(link, force=True)
    assert target.read_text() == "victim"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_key_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot create"):
        write_key(tmp_path / "no" / "such" / "dir" / "k")


# --- Secret -------------------------------------------------------------------------------------

RAW = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")


def test_secret_repr_and_str_never_reveal() -> None:
    s = Secret(RAW)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", format(s), repr([s]), repr({"k": s})):
        assert RAW.hex() not in text
        assert RAW.hex()[:8] not in text
        assert repr(RAW) not in text
        assert "\\x00\\x11" not in text
        assert "redacted" in text
    assert s.reveal() == RAW


def test_secret_cannot_be_pickled() -> None:
    s = Secret(RAW)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(s, protocol=proto)
    with pytest.raises(TypeError):
        copy.copy(s)
    with pytest.raises(TypeError):
        copy.deepcopy(s)


def test_secret_cannot_be_hashed() -> None:
    s = Secret(RAW)
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError):
        {s}  # noqa: B018
    with pytest.raises(TypeError):
        _ = {s: 1}


def test_secret_equality_and_copying_of_input() -> None:
    buf = bytearray(RAW)
    s = Secret(buf)
    buf[0] ^= 0xFF
    assert s.reveal() == RAW  # the secret keeps its own copy
    assert s == Secret(RAW)
    assert s != Secret(bytes(32))
    assert s != RAW  # never equal to the bare bytes
    assert type(s.reveal()) is bytes


def test_secret_has_no_instance_dict() -> None:
    s = Secret(RAW)
    with pytest.raises(AttributeError):
        s.other = 1  # type: ignore[attr-defined]
    assert not hasattr(s, "__dict__")


# --- the command line ---------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_check_config_ok(tmp_path: Path, base: dict[str, Any]) -> None:
    path = write_config(tmp_path, base)
    res = run_cli("check-config", "--config", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "ok" in res.stdout
    assert "gw-a" in res.stdout
    assert str(default_node_id("gw-a")) in res.stdout


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("priority", "[node].priority"),
        ("mode", "chmod 600"),
        ("section", "[bogus]"),
        ("toml", "not valid TOML"),
        ("missing", "cannot read"),
        ("api", "[api]"),
    ],
)
def test_cli_check_config_errors(
    tmp_path: Path, base: dict[str, Any], key_file: Path, case: str, needle: str
) -> None:
    data = copy.deepcopy(base)
    path = tmp_path / "hasyncd.toml"
    if case == "priority":
        data["node"]["priority"] = 256
    elif case == "mode":
        key_file.chmod(0o640)
    elif case == "section":
        data["bogus"] = {"a": 1}
    elif case == "api":
        data["api"] = {}
    if case == "toml":
        path.write_text("[node]\nname = \n")
    elif case != "missing":
        path.write_text(to_toml(data))
    res = run_cli("check-config", "--config", str(path))
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hasyncd: configuration error: ")
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_cli_check_config_does_not_print_the_key(tmp_path: Path, base: dict[str, Any]) -> None:
    _write_private(tmp_path / "link.key", b"secretsecretsecret")
    res = run_cli("check-config", "--config", str(write_config(tmp_path, base)))
    assert res.returncode == 2
    assert "secretsecret" not in res.stderr + res.stdout


def test_cli_keygen(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    res = run_cli("keygen", str(path))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert len(bytes.fromhex(first.strip())) == 32
    assert first.strip() not in res.stdout + res.stderr
    res = run_cli("keygen", str(path))
    assert res.returncode == 2
    assert "exists" in res.stderr
    assert path.read_text() == first
    res = run_cli("keygen", "--force", str(path))
    assert res.returncode == 0, res.stderr
    assert path.read_text() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_policy_lists_every_kind() -> None:
    res = run_cli("policy")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(POLICY) == 14  # twelve product kinds, two internal ones
    for line, p in zip(lines, POLICY, strict=True):
        assert line.split()[0] == p.kind
        if p.replicated:
            assert line.split()[1] == "replicated"
        else:
            assert "NOT replicated" in line
        assert p.reason in line


# --- [replication]: the backlog a secondary resumes from ----------------------------------


def test_replication_backlog_defaults_and_settings(tmp_path: Path, base: dict[str, Any]) -> None:
    cfg = parse(base, tmp_path / "x.toml", load_key=False)
    assert (cfg.replication.backlog_mib, cfg.replication.backlog_s) == (
        BACKLOG_MIB_DEFAULT,
        BACKLOG_S_DEFAULT,
    )
    data = with_value(base, "replication", "backlog_mib", 2)
    data["replication"]["backlog_s"] = 5
    s = core_settings(parse(data, tmp_path / "x.toml", load_key=False))
    assert (s.backlog_bytes, s.backlog_s) == (2 << 20, 5.0)
    # A short tombstone lifetime shortens the default age (tombstones must outlive it).
    short = parse(
        with_value(base, "store", "tombstone_ttl_s", 30), tmp_path / "x.toml", load_key=False
    )
    assert short.replication.backlog_s == 29


@pytest.mark.parametrize(
    ("key", "value"),
    [("backlog_mib", 0), ("backlog_mib", 4097), ("backlog_s", -1), ("backlog_s", 1.5)],
)
def test_replication_bad_values_are_refused(
    tmp_path: Path, base: dict[str, Any], key: str, value: Any
) -> None:
    err = config_error(tmp_path, with_value(base, "replication", key, value))
    assert f"[replication].{key}" in err.message


def test_backlog_must_be_younger_than_tombstones(tmp_path: Path, base: dict[str, Any]) -> None:
    data = with_value(base, "store", "tombstone_ttl_s", 60)
    data["replication"] = {"backlog_s": 60}
    err = config_error(tmp_path, data)
    assert "[replication].backlog_s" in err.message and "tombstone_ttl_s" in err.message
