"""Threads that went quiet: their runs are ended after ``idle_s`` without an invocation.

A served thread keeps its orla run (and its cache slot, or saved slot file) between
invocations, so that its next turn finds its context cached. An app whose conversations
simply stop, never calling ``end_thread``, would keep every run it ever served; so a
thread idle for ``idle_s`` (an hour unless told) has its run ended, as ``end_thread``
would, when a later invocation starts. Its state stays in the graph's checkpointer: if
it comes back, it gets a new run and its context is prefilled again. Swept at most every
tenth of ``idle_s``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

DEFAULT_THREAD_IDLE_S = 3600.0


class IdleThreads:
    """The runs of served threads: which are in an invocation, and since when the others
    have been idle. Safe from any thread."""

    def __init__(self, idle_s: float = DEFAULT_THREAD_IDLE_S) -> None:
        self.idle_s = idle_s
        self._active: Counter[str] = Counter()
        self._idle_since: dict[str, float] = {}
        self._swept_at = time.monotonic()
        self._lock = threading.Lock()

    def begin(self, run_id: str) -> list[str]:
        """``run_id`` is in an invocation; the runs idle for too long, now to be ended."""
        with self._lock:
            self._active[run_id] += 1
            self._idle_since.pop(run_id, None)
            return self._expired()

    def end(self, run_id: str, kept: bool) -> None:
        """An invocation of ``run_id`` ended; ``kept`` where its run stays for the next."""
        with self._lock:
            self._active[run_id] -= 1
            if self._active[run_id] > 0:
                return
            del self._active[run_id]
            if kept:
                self._idle_since[run_id] = time.monotonic()

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._idle_since.pop(run_id, None)

    def _expired(self) -> list[str]:
        now = time.monotonic()
        if now - self._swept_at < self.idle_s / 10:
            return []
        self._swept_at = now
        expired = [run for run, since in self._idle_since.items() if now - since >= self.idle_s]
        for run in expired:
            del self._idle_since[run]
        return expired
