"""Threads started inside a served node carry the node's context.

A node that fans its model calls out over a ``concurrent.futures.ThreadPoolExecutor``, or
over threads of its own, runs them in threads that do not see LangGraph's config (context
variables stay with the thread that set them), so orla could not tell which node, thread
or run they belong to, and they would reach the app's own endpoint unserved. Once a graph
has been served in this process, ``ThreadPoolExecutor.submit`` and ``Thread.start`` are
wrapped for the rest of it: a task submitted, or a thread started, from inside a served
invocation runs in a copy of that context, as LangChain's own ``ContextThreadPoolExecutor``
does. A pool's worker threads are left alone (each task brings its own context), and so
is everything started outside a served invocation, after one look at LangGraph's current
config (a context variable).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_checks: list[Callable[[], bool]] = []
_lock = threading.Lock()


def carry_invocations_into_thread_pools(in_invocation: Callable[[], bool]) -> None:
    """Copy the submitter's context into pool tasks where ``in_invocation()`` says the
    submitter runs in a served invocation (installed once; idempotent)."""
    with _lock:
        if in_invocation in _checks:
            return
        if not _checks:
            submit, start = ThreadPoolExecutor.submit, threading.Thread.start
            ThreadPoolExecutor.submit = _carrying(submit)  # type: ignore[method-assign]
            threading.Thread.start = _carrying_start(start)  # type: ignore[method-assign,assignment]
        _checks.append(in_invocation)


def _carrying(submit: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
    @functools.wraps(submit)
    def carrying_submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any,
                        **kwargs: Any) -> Future[Any]:
        if any(check() for check in _checks):
            return submit(self, contextvars.copy_context().run, fn, *args, **kwargs)
        return submit(self, fn, *args, **kwargs)

    return carrying_submit


def _carrying_start(start: Callable[[threading.Thread], None]
                    ) -> Callable[[threading.Thread], None]:
    @functools.wraps(start)
    def carrying_start(self: threading.Thread) -> None:
        if not _is_pool_worker(self) and any(check() for check in _checks):
            run, context = self.run, contextvars.copy_context()
            self.run = functools.partial(context.run, run)  # type: ignore[method-assign]
        start(self)

    return carrying_start


def _is_pool_worker(thread: threading.Thread) -> bool:
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", "") == "concurrent.futures.thread"
