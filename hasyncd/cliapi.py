"""The commands that ask a running node through its local API: status, history, records, failover.

Each finds the API (``--api``, else ``--config``'s ``[api]``, else the
default socket), makes its requests with ``hasyncd.client`` and prints the
answer, or one line saying why not with its exit code: EXIT_CONFIG for an
unusable ``--api``/``--config``, EXIT_RUNTIME for an API that cannot be
reached or refuses.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasyncd.errors import ConfigError

if TYPE_CHECKING:
    from hasyncd.client import Client

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
DEFAULT_SOCKET = "/run/hasyncd/api.sock"


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
