"""Thread pools started inside a served node carry the node's context.

A node that fans its model calls out over a ``concurrent.futures.ThreadPoolExecutor``
runs them in threads that do not see LangGraph's config (context variables stay with the
thread that set them), so orla could not tell which node, thread or run they belong to,
and they would reach the app's own endpoint unserved. Once a graph has been served in
this process, ``ThreadPoolExecutor.submit`` is wrapped for the rest of it: a task
submitted from inside a served invocation runs in a copy of the submitter's context, as
LangChain's own ``ContextThreadPoolExecutor`` does; a submission from anywhere else is
passed on unchanged, after one look at LangGraph's current config (a context variable).
Threads started with ``threading.Thread`` directly are not covered: start them with
``contextvars.copy_context().run`` as their target.
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
            original = ThreadPoolExecutor.submit
            ThreadPoolExecutor.submit = _carrying(original)  # type: ignore[method-assign]
        _checks.append(in_invocation)


def _carrying(submit: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
    @functools.wraps(submit)
    def carrying_submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any,
                        **kwargs: Any) -> Future[Any]:
        if any(check() for check in _checks):
            return submit(self, contextvars.copy_context().run, fn, *args, **kwargs)
        return submit(self, fn, *args, **kwargs)

    return carrying_submit
