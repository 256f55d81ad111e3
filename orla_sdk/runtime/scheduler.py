"""Per-backend admission: at most ``limit`` requests at an engine at once.

Waiting requests are served highest priority first, then longest critical path (the
stage holding up the most downstream work), then first come. A stage holds a turn only
for one model call, so a stage busy running a tool lets other work in.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class BackendQueue:
    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"backend {name!r}: a queue needs a limit of at least 1")
        self.name = name
        self.limit = limit
        self.running = 0
        self._waiting: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def turn(self, priority: int, critical_path: int = 0) -> AsyncIterator[float]:
        """Wait for a turn at the engine; yields the seconds spent waiting."""
        started = time.perf_counter()
        if self.running < self.limit and not self._waiting:
            self.running += 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (-priority, -critical_path, next(self._arrivals), granted)
            heapq.heappush(self._waiting, entry)
            try:
                await granted
            except asyncio.CancelledError:
                self._withdraw(entry)
                raise
        try:
            yield time.perf_counter() - started
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            *_, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the turn passes on; running stays the same
                return
        self.running -= 1

    def _withdraw(self, entry: tuple[int, int, int, asyncio.Future[None]]) -> None:
        if entry in self._waiting:
            self._waiting.remove(entry)
            heapq.heapify(self._waiting)
        elif entry[3].done():  # granted just as it was cancelled: pass the turn on
            self._release()
