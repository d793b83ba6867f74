"""The HTTP floor: what aiohttp alone costs per PUT on this machine, for reading PUT latencies.

    .venv/bin/python bench/http_floor.py [--requests 3000]

Serves one aiohttp handler (read the body, answer a small JSON object, as
hasyncd's PUT does) on a Unix socket in a child process and sends it PUTs of
a record-sized body one at a time on a keep-alive connection, as the suite's
single-PUT figure does (bench/hasyncd_bench.put_latency).  Prints p50/p99
latency and the server's CPU per request.  No hasyncd code runs: whatever
hasyncd's PUT costs beyond this is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from observe import UnixHTTP
from stats import percentiles_ms
from sysinfo import cpu_seconds

BODY = b'{"a":"' + b"x" * 1300 + b'"}'  # about one realistic ipsec_sa's API JSON


async def _put(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": request.match_info["id"], "version": {"epoch": 1, "seq": 2}})


def _serve(path: str) -> None:
    app = web.Application()
    app.router.add_put("/v1/records/{kind}/{id}", _put)
    web.run_app(app, path=path, print=None, handle_signals=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    path = str(Path(tempfile.mkdtemp()) / "floor.sock")
    pid = os.fork()
    if pid == 0:
        _serve(path)
        os._exit(0)
    try:
        while not os.path.exists(path):
            time.sleep(0.05)
        conn = UnixHTTP(path)
        for _ in range(200):  # warm the connection and the handler
            conn.call("PUT", "/v1/records/ipsec_sa/x", BODY)
        cpu0 = cpu_seconds(pid)
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            conn.call("PUT", "/v1/records/ipsec_sa/x", BODY)
            times.append(time.perf_counter() - t)
        cpu = cpu_seconds(pid) - cpu0
        out = {**percentiles_ms(times), "server_cpu_us_per_request": cpu / args.requests * 1e6}
        print(json.dumps(out, indent=2))
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    sys.exit(main())
