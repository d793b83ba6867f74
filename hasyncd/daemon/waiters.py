"""Sync-mode writes wait here until every in-sync secondary acknowledged their version."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class SyncWaiters:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._ids = itertools.count()
        self._watermark: int | None = None

    def update(self, watermark: int | None) -> None:
        """The core reports a new watermark (None: no secondary is in sync)."""
        self._watermark = watermark
        heap = self._heap
        while heap and (watermark is None or heap[0][0] <= watermark):
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(watermark is not None)

    async def wait(self, version: int, timeout: float) -> bool:
        """True once replicated; False when it cannot be (no in-sync secondary) or times out."""
        if self._watermark is None:
            return False
        if version <= self._watermark:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (version, next(self._ids), fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
