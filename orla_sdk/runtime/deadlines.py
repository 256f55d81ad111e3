"""The deadline of each model call of a pool, kept by one timer.

One timer, set for the earliest deadline, is enough: ``asyncio.timeout`` would arm and
disarm a timer of the loop for every call, a few microseconds each on the path every
call takes. Most calls end long before their deadline, so the timer rarely fires.
"""

from __future__ import annotations

import asyncio


class Call:
    """One call under its deadline; ``expired`` once the deadline cancelled it."""

    __slots__ = ("at", "expired", "task")

    def __init__(self, task: asyncio.Task[object], at: float) -> None:
        self.task, self.at, self.expired = task, at, False


class Deadlines:
    """Cancels each call's task when the call passes its allowance."""

    def __init__(self) -> None:
        self._calls: dict[Call, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, allowance_s: float) -> Call:
        """Put the current task's call under a deadline ``allowance_s`` from now."""
        task = asyncio.current_task()
        assert task is not None, "a call runs in a task"
        loop = task.get_loop()
        call = Call(task, loop.time() + allowance_s)
        self._calls[call] = None
        if self._timer is None or call.at < self._timer.when():
            self._set_timer(loop, call.at)
        return call

    def end(self, call: Call) -> None:
        self._calls.pop(call, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_timer(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self.close()
        self._timer = loop.call_at(at, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the calls past their deadline; set the timer for the next deadline."""
        self._timer = None
        now = loop.time()
        overdue = [call for call in self._calls if call.at <= now]
        for call in overdue:
            del self._calls[call]
            call.expired = True
            call.task.cancel()
        if self._calls:
            self._set_timer(loop, min(call.at for call in self._calls))
