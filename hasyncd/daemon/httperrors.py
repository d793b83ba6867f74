"""Every API error reply: from an exception to its status and JSON body, in one place.

``api_error`` turns any exception into the error answered (ours carry their
HTTP status and body fields, ``hasyncd.errors``; anything else is a logged
bug answered 500 ``internal_error``); ``error_response`` makes the reply.
The error middleware, each failed batch op and the refusals below use them.

Requests aiohttp refuses before any handler runs (an over-long request line
or header, a malformed request or a bad method) would be answered by
aiohttp's HTTP parser in plain text, logging the parser's message, which
quotes the start of the request line (where a web session's id, the cookie
digest, may stand).  Here the reply is the API's ``{"error": "http_<status>",
...}`` body, the refusal is counted in ``hasyncd_api_errors_total``, and the
log line names only the status and the error's class.

Each handler also keeps its listener's connection count
(``hasyncd.daemon.apilimits.Budget``): one more from ``connection_made``, one
less at ``connection_lost``, which asyncio always pairs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hasyncd.daemon.apilimits import Budget
from hasyncd.errors import ApiError, HasyncdError, error_body

log = logging.getLogger("hasyncd.api")


def api_error(exc: BaseException) -> HasyncdError:
    """The error the API answers for ``exc``: ours as raised, anything else a logged bug."""
    if isinstance(exc, HasyncdError):
        return exc
    if isinstance(exc, web.HTTPException):  # aiohttp's own (unknown route, bad method...)
        return ApiError(exc.status, f"http_{exc.status}", exc.reason)
    log.error("internal error in the API", exc_info=exc)
    return ApiError(500, "internal_error", "internal error (logged)")


def error_response(err: HasyncdError) -> web.Response:
    resp = web.json_response(error_body(err), status=err.http_status)
    if err.http_status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
        # One refusal per connection: no keep-alive for a client without the token,
        # so it cannot hold a TCP slot past its 401.
        resp.force_close()
    return resp


class JsonErrorHandler(RequestHandler):
    __slots__ = ("_budget", "_count", "_counted")

    def __init__(
        self, count: Callable[[str], None], budget: Budget, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._count, self._budget, self._counted = count, budget, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._budget.opened()
        self._counted = True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._budget.closed()
        super().connection_lost(exc)

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
        resp = error_response(ApiError(status, code, "the request is malformed or too large"))
        resp.force_close()
        return resp


def handler_factory(
    server: web.Server, count: Callable[[str], None]
) -> Callable[[Budget], JsonErrorHandler]:
    """What ``server()`` makes, with JSON errors and counted in ``budget``: aiohttp's arguments."""
    kwargs = server._kwargs  # (private: aiohttp keeps the runner's handler settings here)
    loop = server._loop

    def make(budget: Budget) -> JsonErrorHandler:
        return JsonErrorHandler(count, budget, server, loop=loop, **kwargs)

    return make
