"""Data-plane hooks: executables run in order, one at a time, never blocking promotion.

Each run gets a JSON document on stdin and ``HASYNCD_*`` variables; its exit
status, duration and the tail of its stderr are recorded (status, metrics,
log).  A hook that outlives ``hooks.timeout_s`` is killed.  Promotion does
not wait for hooks: keepalived's users learned that waiting lets a lower
priority node take over meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable

from hasyncd.config import HooksConfig

log = logging.getLogger("hasyncd.hooks")

HISTORY = 20  # runs kept for /v1/status
STDERR_TAIL = 500  # bytes of a hook's stderr kept in its record


class HookRunner:
    def __init__(
        self, config: HooksConfig, node: str, on_result: Callable[[str, str, float], None]
    ) -> None:
        self.config = config
        self.node = node
        self.on_result = on_result  # (hook, result, seconds): Metrics.hook_run
        self._queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        self.history: deque[dict[str, object]] = deque(maxlen=HISTORY)
        self.running: str | None = None

    def reconfigure(self, config: HooksConfig) -> None:
        """A reload: hooks submitted from now on use the new paths and timeout."""
        self.config = config

    def submit(self, hook: str, doc: dict[str, object]) -> None:
        if getattr(self.config, hook) is None:
            return
        self._queue.put_nowait((hook, doc))

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def recent(self) -> list[dict[str, object]]:
        """The last HISTORY runs, oldest first (``/v1/status``)."""
        return list(self.history)

    async def run(self) -> None:
        while True:
            hook, doc = await self._queue.get()
            self.running = hook
            try:
                await self._run_one(hook, doc)
            finally:
                self.running = None

    async def _run_one(self, hook: str, doc: dict[str, object]) -> None:
        path = getattr(self.config, hook)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HASYNCD_HOOK": hook,
            "HASYNCD_NODE": self.node,
            "HASYNCD_OLD_ROLE": str(doc["old_role"]),
            "HASYNCD_NEW_ROLE": str(doc["new_role"]),
            "HASYNCD_EPOCH": str(doc["epoch"]),
            "HASYNCD_REASON": str(doc["reason"]),
        }
        started = time.monotonic()
        record: dict[str, object] = {
            "hook": hook,
            "path": str(path),
            "reason": doc["reason"],
            "epoch": doc["epoch"],
            "started_at": time.time(),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            record.update(result="error", error=exc.strerror, duration_ms=0.0)
            self._finish(record)
            return
        try:
            _, err = await asyncio.wait_for(
                proc.communicate(json.dumps(doc).encode() + b"\n"), self.config.timeout_s
            )
            record.update(result="ok" if proc.returncode == 0 else "failed", exit=proc.returncode)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
            record.update(result="timeout", exit=proc.returncode)
        record["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        record["stderr"] = (err or b"")[-STDERR_TAIL:].decode("utf-8", "replace")
        self._finish(record)

    def _finish(self, record: dict[str, object]) -> None:
        self.history.append(record)
        duration = record["duration_ms"]
        seconds = float(duration) / 1000.0 if isinstance(duration, int | float) else 0.0
        self.on_result(str(record["hook"]), str(record["result"]), seconds)
        level = logging.INFO if record["result"] == "ok" else logging.ERROR
        log.log(
            level,
            "hook %s (%s): %s in %s ms (exit %s)",
            record["hook"],
            record["reason"],
            record["result"],
            record["duration_ms"],
            record.get("exit"),
        )
