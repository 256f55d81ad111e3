"""Work a run does away from its event loop, on threads (a plain tool, a stage body that
blocks), and the simulators' virtual clock. The loop cannot see such work, so the clock
would take it for idle time and move on while a tool still runs, by as much as the host
happened to be slow. Instead the work holds the clock while it runs: it takes no
simulated time, as anything else outside the engines. While the thread waits for the
loop (a tool that calls the model), the hold is lifted, or the clock could never bring
the answer it waits for."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable
from typing import TypeVar

from orla_sdk.backends.sim.clock import VirtualClock

T = TypeVar("T")


class Hold:
    """One piece of work's hold on a clock: on while the work runs, off while it waits for
    the loop, off for good once it ended. Used on the loop's thread only."""

    __slots__ = ("clock", "ended", "on")

    def __init__(self, clock: VirtualClock) -> None:
        self.clock, self.on, self.ended = clock, False, False

    def resume(self) -> None:
        if not self.on and not self.ended:
            self.on = True
            self.clock.hold()

    def pause(self) -> None:
        if self.on:
            self.on = False
            self.clock.release()

    def end(self) -> None:
        self.pause()
        self.ended = True


_hold: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("orla_hold", default=None)


def thread_context(clock: VirtualClock) -> tuple[contextvars.Context, Hold]:
    """A copy of the caller's context for work about to run on a thread, and the work's hold
    on ``clock``, on now; ``end`` it once the work is over."""
    hold = Hold(clock)
    context = contextvars.copy_context()
    context.run(_hold.set, hold)
    hold.resume()
    return context, hold


async def unheld(work: Awaitable[T]) -> T:
    """``work`` awaited on the loop for a thread: the thread's hold, if any, is lifted
    meanwhile (this runs in a copy of the thread's context)."""
    hold = _hold.get()
    if hold is None:
        return await work
    hold.pause()
    try:
        return await work
    finally:
        hold.resume()
