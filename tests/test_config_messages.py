"""The configuration's refusals, word for word: the key, what was expected, what was found.

The sections are declared as frozen dataclasses whose fields carry msgspec
constraints (``hasyncd.configschema``); msgspec's own error texts
("Expected `int` <= 255 - at `$.priority`") must never reach an operator.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from hasyncd.config import parse
from hasyncd.errors import ConfigError

BASE: dict[str, Any] = {
    "node": {"name": "gw-a"},
    "link": {"listen": "127.0.0.1:7411", "peers": ["127.0.0.2:7411"], "psk_file": "/k"},
    "api": {"socket": "/run/hasyncd/api.sock"},
}

CASES: list[tuple[str, str, Any, str]] = [
    ("node", "priority", 256, "[node].priority: expected an integer in 0..255, got 256"),
    ("node", "priority", True, "[node].priority: expected an integer in 0..255, got True"),
    ("node", "id", 0, "[node].id: expected an integer in 1..65535, got 0"),
    ("node", "override", "yes", "[node].override: expected true or false, got 'yes'"),
    (
        "node",
        "preempt_delay_s",
        math.nan,
        "[node].preempt_delay_s: expected a number in 0..86400, got nan",
    ),
    (
        "node",
        "name",
        "gw a",
        "[node].name: expected 1..32 characters of [A-Za-z0-9._-], got 'gw a'",
    ),
    (
        "node",
        "monitor",
        ["eth0", ".."],
        "[node].monitor[1]: expected a Linux interface name, got '..'",
    ),
    (
        "node",
        "monitor",
        ["e"] * 33,
        "[node].monitor: expected a list of at most 32 interface names, got a list of 33",
    ),
    (
        "link",
        "peers",
        [],
        '[link].peers: expected a list of 1..7 "host:port" addresses, got a list of 0',
    ),
    (
        "link",
        "peers",
        ["10.0.0.1:1", "gw:1"],
        "[link].peers[1]: 'gw:1' is not host:port or [v6]:port with an IP address",
    ),
    ("link", "listen", 7411, '[link].listen: expected "host:port", got int'),
    ("link", "listen", "10.0.0.1:0", "[link].listen: port 0 is out of range 1..65535"),
    ("link", "psk_file", "", "[link].psk_file: expected a file path"),
    ("sync", "mode", "SYNC", "[sync].mode: expected one of async, sync, got 'SYNC'"),
    ("log", "level", 3, "[log].level: expected one of debug, info, warning, error, got 3"),
    ("node", "colour", "red", "[node]: unknown key 'colour'"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"), CASES, ids=[c[3][:40] for c in CASES]
)
def test_refusal_message(section: str, key: str, value: Any, message: str) -> None:
    data = copy.deepcopy(BASE)
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse(data, Path("/etc/hasyncd/hasyncd.toml"), load_key=False)
    assert exc.value.message == message


def test_required_key_of_an_optional_section() -> None:
    data = copy.deepcopy(BASE)
    data["portal"] = {"listen": "127.0.0.1:8443"}
    with pytest.raises(ConfigError) as exc:
        parse(data, Path("/etc/hasyncd/hasyncd.toml"), load_key=False)
    assert exc.value.message == "[portal].users_file is required"


def test_defaults_are_the_declared_ones_and_typed() -> None:
    cfg = parse(copy.deepcopy(BASE), Path("/etc/hasyncd/hasyncd.toml"), load_key=False)
    assert cfg.node.preempt_delay_s == 60.0 and type(cfg.node.preempt_delay_s) is float
    assert cfg.node.monitor == () and cfg.link.peers[0].port == 7411
    assert cfg.portal is None
    data = copy.deepcopy(BASE)
    data["node"]["preempt_delay_s"] = 5  # a TOML integer for a number key
    cfg = parse(data, Path("/etc/hasyncd/hasyncd.toml"), load_key=False)
    assert type(cfg.node.preempt_delay_s) is float
