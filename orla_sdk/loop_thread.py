"""An asyncio event loop running in a daemon thread of its own.

Sync callers in any thread hand coroutines to it with ``call``; async callers on another
loop await them with ``acall``. orla's serving session, the proxy and the simulator's HTTP
server each keep their runtime on one of these, so that every caller shares one loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import CancelledError, Future
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("orla_sdk")


class LoopThread:
    """``start()`` once, ``submit``/``call``/``acall`` work, ``stop()`` at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"the event loop thread {self.name!r} has not started")
        return self._loop

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the thread, once; safe from any thread."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name=self.name,
                                                daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def call(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``work`` on the loop and wait for it (never from the loop's own thread)."""
        return wait_for(self.loop, work, timeout)

    async def acall(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the loop and await it from another loop."""
        return await asyncio.wrap_future(self.submit(work))

    def in_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop, stop it and join the thread. Tasks that
        do not end within ``timeout`` of their cancellation are logged and left behind:
        they do not keep the loop running."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        if thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(timeout)
            except TimeoutError:
                log.warning("loop %r: tasks still ran %g s after being cancelled; the loop "
                            "stops without them", self.name, timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not loop.is_running():
            loop.close()


def wait_for(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T],
             timeout: float | None = None) -> T:
    """``work``'s result, run on ``loop`` for this thread (not the loop's), which waits.
    ``run_coroutine_threadsafe(work, loop).result()`` does the same with a future chained
    to the task, set a turn of the loop after the task ends; a served app pays for that
    on every model call. Here the task hands its outcome over itself. Cancelled (the loop
    stopping), it raises ``concurrent.futures.CancelledError``, as that future would; any
    other exception of ``work``, ``KeyboardInterrupt`` included, is raised here. Past
    ``timeout`` it raises ``TimeoutError`` and ``work`` goes on."""
    done = threading.Lock()
    done.acquire()
    outcome: list[Any] = []  # [value], or [None, exception]

    async def run() -> None:
        try:
            outcome.append(await work)
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
    if not done.acquire(timeout=-1 if timeout is None else timeout):
        raise TimeoutError(f"the event loop's work took more than {timeout:g} s")
    if len(outcome) == 1:
        value: T = outcome[0]
        return value
    error = outcome[1]
    if isinstance(error, asyncio.CancelledError):
        raise CancelledError() from error
    raise error


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
