"""The hasyncd command: run, check-config, keygen, status, history, records, failover, policy, lab,
portal, portal-user, esp-endpoint."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasyncd import __version__
from hasyncd.errors import ConfigError, HasyncdError

if TYPE_CHECKING:
    from hasyncd.client import Client
    from hasyncd.config import Config

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
DEFAULT_SOCKET = "/run/hasyncd/api.sock"


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


def _api_target(value: str) -> tuple[str | None, str | None]:
    """``--api``: (socket path, None) or (None, "host:port").

    A value that names an existing file or contains "/" is a socket path; one
    with a ":" must then be host:port or [v6]:port with an IP address (any
    other value is a socket path in the current directory).
    """
    from hasyncd.config import parse_address

    if os.path.exists(value) or "/" in value or ":" not in value:
        return value, None
    return None, str(parse_address(value, "--api"))


def _client(args: argparse.Namespace) -> tuple[Client, str]:
    """The API client the command talks to and a description of where (for errors).

    Raises ConfigError with a one-line reason for an unusable --api or --config.
    """
    from hasyncd.client import Client

    token_file: Path | None = None
    if args.api:
        sock, address = _api_target(args.api)
    elif args.config:
        from hasyncd import config as config_mod

        # The API address only: the operator running status need not read the key.
        cfg = config_mod.load(args.config, load_key=False)
        if cfg.api.socket is not None:
            sock, address = str(cfg.api.socket), None
        else:
            sock, address = None, str(cfg.api.listen)
            token_file = cfg.api.token_file
    else:
        sock, address = DEFAULT_SOCKET, None
    if sock is not None:
        return Client(socket=sock), f"socket {sock}"
    token = None
    if getattr(args, "token_file", None):
        token_file = Path(args.token_file)
    if token_file is not None:
        from hasyncd.config import load_secret

        token = load_secret(token_file, "--token-file" if args.api else "[api].token_file")
    return Client(address=address, token=token), str(address)


def _call(args: argparse.Namespace, method: str, path: str) -> tuple[int, Any] | int:
    """(HTTP status, body) from the API, or the exit code after a one-line error."""
    try:
        client, where = _client(args)
    except ConfigError as exc:
        what = "" if args.api else "configuration error: "
        print(f"hasyncd: {what}{exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return client.request(method, path)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        print(f"hasyncd: cannot reach the API at {where}: {reason}", file=sys.stderr)
    except (http.client.HTTPException, ValueError) as exc:
        print(
            f"hasyncd: the API at {where} sent an invalid reply: {type(exc).__name__}",
            file=sys.stderr,
        )
    return EXIT_RUNTIME


def _get(args: argparse.Namespace, path: str) -> Any:
    """The JSON body of a successful GET, or the exit code after a one-line error."""
    got = _call(args, "GET", path)
    if isinstance(got, int):
        return got
    code, body = got
    if code == 200:
        return body
    if isinstance(body, dict) and "error" in body:
        print(f"hasyncd: {body['error']}: {body.get('message', '')}", file=sys.stderr)
    else:
        print(f"hasyncd: HTTP {code} from the API for {path}", file=sys.stderr)
    return EXIT_RUNTIME


def _show(args: argparse.Namespace, body: Any, render: Callable[[Any], str]) -> int:
    if isinstance(body, int):
        return body
    print(json.dumps(body, indent=2) if args.json else render(body))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hasyncd.statusview import render_status

    return _show(args, _get(args, "/v1/status"), render_status)


def cmd_history(args: argparse.Namespace) -> int:
    from hasyncd.statusview import render_history

    return _show(args, _get(args, "/v1/history"), render_history)


# Records per API page when listing: the API's own maximum.
RECORDS_PAGE = 1000


def cmd_records(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from hasyncd.statusview import hide_keys

    kind = quote(args.kind, safe="")
    if args.id is not None:
        body = _get(args, f"/v1/records/{kind}/{quote(args.id, safe='@')}")
        if not isinstance(body, int) and not args.show_keys:
            body["record"] = hide_keys(body["record"])
        return _show(args, body, lambda b: json.dumps(b, indent=2))
    first = _get(args, f"/v1/records/{kind}?limit=1")  # an unknown kind fails here, in one line
    if isinstance(first, int):
        return first
    if args.count:
        st = _get(args, "/v1/status")
        if isinstance(st, int):
            return st
        count = int(st["records"].get(args.kind, 0))
        print(json.dumps({"kind": args.kind, "count": count}) if args.json else count)
        return 0
    after: str | None = None
    shown = 0
    while args.limit is None or shown < args.limit:
        query = f"limit={RECORDS_PAGE}" + (f"&after={quote(after, safe='')}" if after else "")
        page = _get(args, f"/v1/records/{kind}?{query}")
        if isinstance(page, int):
            return page
        for item in page["items"]:
            if args.limit is not None and shown >= args.limit:
                break
            v = item["version"]
            if args.json:
                if not args.show_keys:
                    item["record"] = hide_keys(item["record"])
                print(json.dumps(item))
            else:
                print(f"{item['id']}  {v['epoch']}.{v['seq']}")
            shown += 1
        after = page["next"]
        if after is None:
            break
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    got = _call(args, "POST", "/v1/failover")
    if isinstance(got, int):
        return got
    code, body = got
    if code == 200:
        print(f"primary role handed to {body['new_primary']} (epoch {body['epoch']})")
        return 0
    if not isinstance(body, dict):
        body = {"error": f"http_{code}", "message": str(body)[:200]}
    print(f"hasyncd: failover refused: {body.get('error')}: {body.get('message')}", file=sys.stderr)
    return EXIT_RUNTIME


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
