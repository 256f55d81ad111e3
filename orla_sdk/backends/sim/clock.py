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
    """Simulated seconds. Sleepers wait in a timer heap; the earliest one is woken once the
    event loop has nothing else to run, that is when every caller is waiting on the engine
    (or on this clock), and no ``hold`` is on: work done away from the loop (a tool on a
    thread) takes no simulated time. Share one between engines to keep them in step."""

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._ticking: asyncio.AbstractEventLoop | None = None  # the loop _tick runs on
        self._spins = 0
        self._holds = 0

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (max(when, self._now), next(self._order), future))
        self._start(loop)
        await future

    def hold(self) -> None:
        """Keep simulated time still until ``release``: for work of this process that runs
        away from the event loop, which the loop cannot see. Call both on the loop's
        thread."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if not self._holds and self._timers:
            self._start(asyncio.get_running_loop())

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._ticking is not loop:
            self._ticking, self._spins = loop, 0
            loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the earliest sleeper once nothing else of ``loop`` is ready to run, checking
        again after each round of the loop (a callback, not a task: no frame to resume)."""
        if self._holds:  # release starts the clock again
            self._ticking = None
            return
        if not self._settled(loop):
            loop.call_soon(self._tick, loop)
            return
        while self._timers:
            when, _, future = heapq.heappop(self._timers)
            if future.get_loop() is loop and not future.done():
                self._now = max(self._now, when)
                future.set_result(None)
                self._spins = 0
                loop.call_soon(self._tick, loop)
                return
        self._ticking = None

    def _settled(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether no other callback of ``loop`` is ready: CPython's ready queue is empty,
        or, on loops that hide it (uvloop), the clock has waited this many rounds."""
        self._spins += 1
        ready = getattr(loop, "_ready", None)
        if ready is None:
            return self._spins > SPINS_WITHOUT_READY_QUEUE
        return not ready or self._spins > MAX_SPINS


SPINS_WITHOUT_READY_QUEUE = 64  # loops that hide their ready queue (uvloop) get this many
MAX_SPINS = 10_000              # a task that yields forever cannot stop the clock
