"""Requests aiohttp refuses before any handler runs: answered in the API's JSON and counted.

An over-long request line or header, a malformed request or a bad method is
refused by aiohttp's HTTP parser, which would answer in plain text and log
the parser's message, and that message quotes the start of the request line
(where a web session's id, the cookie digest, may stand).  Here the reply is
the API's ``{"error": "http_<status>", ...}`` body, the refusal is counted in
``hasyncd_api_errors_total``, and the log line names only the status and the
error's class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("hasyncd.api")


class JsonErrorHandler(RequestHandler):
    __slots__ = ("_count",)

    def __init__(self, count: Callable[[str], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count = count

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code = f"http_{status}"
        self._count(code)
        log.debug("refused a request before routing: %s (%s)", code, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent: cannot send an error")
        resp = web.json_response(
            {"error": code, "message": "the request is malformed or too large"}, status=status
        )
        resp.force_close()
        return resp


def handler_factory(server: web.Server, count: Callable[[str], None]) -> Callable[[], Any]:
    """What ``server()`` makes, with JSON errors: the same arguments aiohttp would pass."""
    kwargs = server._kwargs  # (private: aiohttp keeps the runner's handler settings here)
    loop = server._loop

    def make() -> JsonErrorHandler:
        return JsonErrorHandler(count, server, loop=loop, **kwargs)

    return make
