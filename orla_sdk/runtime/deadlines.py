"""The deadline of each model call of a pool, kept by one timer.

One timer, set for the earliest deadline, is enough: ``asyncio.timeout`` would arm and
disarm a timer of the loop for every call, a few microseconds each on the path every
call takes. Most calls end long before their deadline, so the timer rarely fires.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from orla_sdk.errors import BackendError


class Call:
    """One call to ``backend`` under its deadline, as ``with deadlines.start(...)``:
    ``expired`` once the deadline cancelled it, which the block's end turns into a
    retryable ``BackendError`` (a plain ``with``, not an ``async with``: no coroutine of
    its own on the path of every call)."""

    __slots__ = ("allowance_s", "at", "backend", "deadlines", "expired", "task")

    def __init__(self, deadlines: Deadlines, task: asyncio.Task[object], backend: str,
                 allowance_s: float) -> None:
        self.deadlines, self.task, self.backend = deadlines, task, backend
        self.allowance_s, self.at = allowance_s, task.get_loop().time() + allowance_s
        self.expired = False

    def __enter__(self) -> Call:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.deadlines.end(self)
        if not self.expired:
            return
        self.task.uncancel()  # the deadline's cancellation is spent, even if chat ignored it
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            raise BackendError(self.backend, f"did not finish the call within its deadline "
                               f"of {self.allowance_s:g} s; give BackendPool(timeout=...) "
                               "more for longer answers", retryable=True) from None


class Deadlines:
    """Cancels each call's task when the call passes its allowance."""

    def __init__(self) -> None:
        self._calls: dict[Call, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, allowance_s: float, backend: str) -> Call:
        """Put the current task's call to ``backend`` under a deadline ``allowance_s`` from
        now."""
        task = asyncio.current_task()
        assert task is not None, "a call runs in a task"
        call = Call(self, task, backend, allowance_s)
        self._calls[call] = None
        if self._timer is None or call.at < self._timer.when():
            self._set_timer(task.get_loop(), call.at)
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
