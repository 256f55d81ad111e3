"""The simulator's clocks. Time is simulated. With ``clock="virtual"`` nothing sleeps: a
clock of its own jumps to the next event once every other task of the event loop is
waiting, so thousands of concurrent calls finish in seconds. With ``clock="real"`` the
engine sleeps for the simulated durations."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class SimClock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class RealClock:
    """Seconds since the clock was made; sleeping really sleeps."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - self.now()))


class VirtualClock:
    """Simulated seconds. Sleepers wait in a timer heap; a driver task wakes the earliest
    one once the event loop has nothing else to run, that is when every caller is waiting
    on the engine (or on this clock). Share one between engines to keep them in step."""

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (max(when, self._now), next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while self._timers:
            await settle()
            when, _, future = heapq.heappop(self._timers)
            if future.get_loop() is loop and not future.done():
                self._now = max(self._now, when)
                future.set_result(None)


SPINS_WITHOUT_READY_QUEUE = 64  # loops that hide their ready queue (uvloop) get this many
MAX_SPINS = 10_000              # a task that yields forever cannot stop the clock


async def settle() -> None:
    """Return once no other callback of this event loop is ready to run."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)  # CPython's ready queue
    for spin in range(MAX_SPINS):
        await asyncio.sleep(0)
        if (ready is None and spin >= SPINS_WITHOUT_READY_QUEUE) or (
                ready is not None and not ready):
            return
