"""Work a run does away from its event loop, on threads (a plain tool, a stage body that
blocks), and the simulators' virtual clock. The loop cannot see such work, so the clock
would take it for idle time and move on while a tool still runs, by as much as the host
happened to be slow. Instead the work holds the clock while it runs: it takes no
simulated time, as anything else outside the engines. While the thread waits for the
loop (a tool that calls the model), the hold is lifted, or the clock could never bring
the answer it waits for."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

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


def wait_for_loop(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, run on ``loop`` for this thread (not the loop's), which waits.
    ``run_coroutine_threadsafe(work, loop).result()`` does the same with a future chained
    to the task, set a turn of the loop after the task ends; a served app pays for that
    on every model call. Here the task hands its outcome over itself. Cancelled (the loop
    stopping), it raises ``concurrent.futures.CancelledError``, as that future would; any
    other exception of ``work``, ``KeyboardInterrupt`` included, is raised here."""
    done = threading.Lock()
    done.acquire()
    outcome: list[Any] = []  # [value], or [None, exception]

    async def run() -> None:
        try:
            outcome.append(await unheld(work))
        except BaseException as exc:
            outcome[:] = [None, exc]
        finally:
            done.release()

    def never_ran(task: asyncio.Task[None]) -> None:
        if not outcome:  # cancelled before its first step: ``run`` never started
            work.close()
            outcome[:] = [None, asyncio.CancelledError()]
            done.release()

    def start() -> None:
        task = loop.create_task(run())
        task.add_done_callback(never_ran)
        tasks.append(task)  # held here: the loop keeps weak references to tasks only

    tasks: list[asyncio.Task[None]] = []
    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # the loop is closed
        work.close()
        raise
    done.acquire()
    if len(outcome) == 1:
        value: T = outcome[0]
        return value
    error = outcome[1]
    if isinstance(error, asyncio.CancelledError):
        raise concurrent.futures.CancelledError() from error
    raise error


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
