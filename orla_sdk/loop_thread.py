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
from concurrent.futures import Future
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
        return self.submit(work).result(timeout)

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


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
