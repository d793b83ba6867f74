"""The hasyncd command: run, check-config, keygen, status, history, records, failover, policy, lab,
portal, portal-user, esp-endpoint.

The commands that ask a running node through its API (status, history,
records, failover) are ``hasyncd.cliapi``; this module parses the command
line and runs the others.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasyncd import __version__
from hasyncd.cliapi import (
    DEFAULT_SOCKET,
    EXIT_CONFIG,
    EXIT_RUNTIME,
    cmd_failover,
    cmd_history,
    cmd_records,
    cmd_status,
)
from hasyncd.errors import ConfigError, HasyncdError

if TYPE_CHECKING:
    from hasyncd.config import Config


def _load(path: Path) -> Config | None:
    """The validated config, or None after printing the one-line reason."""
    from hasyncd import config as config_mod

    try:
        return config_mod.load(path)
    except ConfigError as exc:
        print(f"hasyncd: configuration error: {exc.message}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    # Until the daemon's own handler is installed, a reload request (SIGHUP,
    # whose default action is to terminate) must not kill a starting node.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from hasyncd.daemon.shell import Daemon

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    from hasyncd.daemon import logs

    logs.setup(cfg.log.level)

    async def main() -> None:
        daemon = Daemon(cfg)
        await daemon.run()

    try:
        asyncio.run(main())
    except HasyncdError as exc:
        print(f"hasyncd: {exc.message}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(
        f"{args.config}: ok (node {cfg.node.name}, id {cfg.node.id}, "
        f"{len(cfg.link.peers)} peer(s), sync mode {cfg.sync.mode})"
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from hasyncd.config import write_key

    try:
        write_key(Path(args.path), force=args.force)
    except ConfigError as exc:
        print(f"hasyncd: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.token:
        print(f"wrote a new API token to {args.path} (mode 0600); set [api] token_file to it")
    else:
        from hasyncd.config import load_psk
        from hasyncd.wire.handshake import key_id

        kid = key_id(load_psk(Path(args.path)).reveal()).hex()
        print(
            f"wrote a new 32-byte key to {args.path} (mode 0600, key id {kid}); "
            "copy it to every member"
        )
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from hasyncd.policy import POLICY

    for p in POLICY:
        print(f"{p.kind:24} {'replicated' if p.replicated else 'NOT replicated':15} {p.reason}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from hasyncd.lab import run_lab

    return run_lab(records=args.records, keep=args.keep, workdir=args.dir)


def cmd_portal(args: argparse.Namespace) -> int:
    from hasyncd.daemon import logs
    from hasyncd.portal.app import serve

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logs.setup(cfg.log.level)
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"hasyncd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except HasyncdError as exc:
        print(f"hasyncd: {exc.message}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def cmd_esp_endpoint(args: argparse.Namespace) -> int:
    from hasyncd.contrib import espd

    try:
        return espd.main(args.config)
    except ConfigError as exc:
        print(f"hasyncd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_portal_user(args: argparse.Namespace) -> int:
    import getpass

    from hasyncd.portal.users import add_user

    if args.users_file is not None:
        users_file = Path(args.users_file)
    else:
        cfg = _load(args.config) if args.config is not None else None
        if cfg is None or cfg.portal is None:
            print("hasyncd: give --users-file, or --config with [portal]", file=sys.stderr)
            return EXIT_CONFIG
        users_file = cfg.portal.users_file
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("hasyncd: the passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    try:
        replaced = add_user(users_file, args.name, password)
    except ConfigError as exc:
        print(f"hasyncd: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{'replaced' if replaced else 'added'} user {args.name} in {users_file} (mode 0600)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hasyncd",
        description="State synchronization for HA VPN gateway clusters: one daemon per node "
        "(hasyncd run), and the commands an operator runs next to it.",
    )
    parser.add_argument("--version", action="version", version=f"hasyncd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", "-c", required=True, type=Path)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file and its key file")
    p.add_argument("--config", "-c", required=True, type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "keygen", help="write a new random 32-byte key (mode 0600): the link key, or an API token"
    )
    p.add_argument("path")
    p.add_argument(
        "--token", action="store_true", help="for [api] token_file (the TCP API's bearer token)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_keygen)

    def api_command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", "-c", help="read the API address from this config")
        p.add_argument("--api", help=f"API socket path or host:port (default {DEFAULT_SOCKET})")
        p.add_argument("--token-file", help="the TCP API's token (default: [api].token_file)")
        p.set_defaults(func=func)
        return p

    for name, func, text in (
        ("status", cmd_status, "show a running node's role, peers, sync and recent role changes"),
        ("history", cmd_history, "show a running node's recent role changes"),
    ):
        api_command(name, func, text).add_argument(
            "--json", action="store_true", help="the API's JSON document, for scripts"
        )
    api_command("failover", cmd_failover, "hand the primary role to the best in-sync secondary")
    p = api_command("records", cmd_records, "list a kind's records, or show one")
    p.add_argument("kind", help="ipsec_sa, ike_sa or sslvpn_web_session")
    p.add_argument("id", nargs="?", help="show this record")
    p.add_argument("--count", action="store_true", help="print how many records of KIND exist")
    p.add_argument("--limit", type=int, help="list at most this many")
    p.add_argument("--show-keys", action="store_true", help="show key material (hidden otherwise)")
    p.add_argument("--json", action="store_true", help="JSON (one item per line when listing)")

    p = sub.add_parser("policy", help="print the replication policy table")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("lab", help="two-node lab on loopback: replication and a failover")
    p.add_argument("--records", type=int, default=200, help="child SAs to create (default 200)")
    p.add_argument("--keep", action="store_true", help="keep the lab directory")
    p.add_argument("--dir", type=Path, help="use this directory instead of a temporary one")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("portal", help="run the reference web-mode SSL VPN portal ([portal])")
    p.add_argument("--config", "-c", required=True, type=Path)
    p.set_defaults(func=cmd_portal)

    p = sub.add_parser(
        "esp-endpoint", help="run the reference userspace ESP-in-UDP endpoint ([esp] section)"
    )
    p.add_argument("--config", "-c", required=True, type=Path)
    p.set_defaults(func=cmd_esp_endpoint)

    p = sub.add_parser("portal-user", help="manage the portal's users file")
    p.add_argument("action", choices=["add"], help="add (or replace) a user")
    p.add_argument("name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", type=Path, help="use [portal].users_file of this config")
    where.add_argument("--users-file", type=Path)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_portal_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
