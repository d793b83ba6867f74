"""``[link] psk_next_file``: read like ``psk_file``, and reloaded live with the key ids logged."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from hasyncd.daemon.reload import plan
from hasyncd.daemon.shell import core_settings
from hasyncd.errors import ConfigError
from hasyncd.wire.handshake import key_id

from .test_config import base, config_error, key_file, load_data, make_key  # noqa: F401


def with_next(data: dict[str, Any], path: Path) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out["link"]["psk_next_file"] = str(path)
    return out


def test_psk_next_file_is_loaded_and_reaches_the_core(tmp_path: Path, base: dict[str, Any]) -> None:  # noqa: F811
    nxt = make_key(tmp_path / "next.key")
    cfg = load_data(tmp_path, with_next(base, nxt))
    assert cfg.psk_next is not None and cfg.psk_next != cfg.psk
    keys = core_settings(cfg).keyring()
    assert keys.next == cfg.psk_next and keys.preferred == cfg.psk_next
    assert cfg.psk_next.reveal().hex() not in repr(cfg)


def test_psk_next_file_must_be_private(tmp_path: Path, base: dict[str, Any]) -> None:  # noqa: F811
    nxt = make_key(tmp_path / "next.key")
    nxt.chmod(0o640)
    msg = config_error(tmp_path, with_next(base, nxt)).message
    assert "[link].psk_next_file" in msg and "chmod 600" in msg
    nxt.unlink()
    assert "No such file" in config_error(tmp_path, with_next(base, nxt)).message


def test_a_reload_applies_key_changes_live_and_logs_key_ids_only(
    tmp_path: Path,
    base: dict[str, Any],  # noqa: F811
) -> None:
    old = load_data(tmp_path, base)
    nxt = make_key(tmp_path / "next.key")
    new = load_data(tmp_path, with_next(base, nxt))
    change = plan(old, new)
    assert change.need_restart == ()
    assert change.config.psk_next == new.psk_next and change.config.psk == old.psk
    (line,) = (a for a in change.applied if a.startswith("[link] key ids"))
    kid_old, kid_new = (key_id(c.reveal()).hex() for c in (old.psk, new.psk_next))  # type: ignore[union-attr]
    assert line == f"[link] key ids: current {kid_old} -> current {kid_old}, next {kid_new}"
    for key in (old.psk, new.psk_next):
        assert key is not None and all(key.reveal().hex() not in a for a in change.applied)
    # Promoting: the next key's contents in psk_file, psk_next_file gone.
    promoted = copy.deepcopy(base)
    promoted["link"]["psk_file"] = str(nxt)
    done = plan(change.config, load_data(tmp_path, promoted))
    assert done.config.psk == new.psk_next and done.config.psk_next is None
    assert done.need_restart == ()


def test_keyring_ignores_a_next_key_equal_to_the_current_one(
    tmp_path: Path,
    base: dict[str, Any],  # noqa: F811
    key_file: Path,  # noqa: F811
) -> None:
    cfg = load_data(tmp_path, with_next(base, key_file))
    assert core_settings(cfg).keyring().next is None
    with pytest.raises(ConfigError):
        load_data(tmp_path, with_next(base, tmp_path / "absent.key"))
