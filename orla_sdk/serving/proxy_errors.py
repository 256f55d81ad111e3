"""The proxy's answers other than 200: a status and a message, sent in OpenAI's error
envelope; and what a tenant may read of a backend's failure."""

from __future__ import annotations

import logging

from orla_sdk.backends.wire import error_status
from orla_sdk.errors import BackendError
from orla_sdk.runtime.records import CacheLogEntry

log = logging.getLogger("orla_sdk.serving.proxy")


class HttpError(Exception):
    """An answer other than 200, with OpenAI's error envelope; ``param`` names the request
    field at fault, where one is."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def unforeseen(exc: Exception, where: str) -> HttpError:
    """A failure no check foresaw (a bug, say), as clients may read it: a 500 naming its
    type alone; its text and traceback go to the proxy's log."""
    log.error("the proxy failed on %s", where, exc_info=exc)
    return HttpError(500, f"the proxy failed on this request ({type(exc).__name__}); the "
                     "cause is in its log")


def tenant_safe(exc: BackendError) -> BackendError:
    """``exc`` as the proxy's clients may read it. An engine's answer to the request itself
    (4xx) passes as it is; any other failure is named by its backend and kind alone, since
    its message can carry the engine's address and internals (logged here in full)."""
    status = error_status(exc)
    if status < 500:
        return exc
    log.warning("backend %r failed a call (the client gets %d): %s", exc.backend, status,
                exc.detail)
    message = ("unavailable (down, restarting, overloaded or timed out); retry later"
               if exc.retryable else "failed; the cause is in the proxy's log")
    return BackendError(exc.backend, message, retryable=exc.retryable, status=exc.status)


def tenant_safe_log(entries: list[CacheLogEntry]) -> list[CacheLogEntry]:
    """A cache log as tenants may read it: a failed action says what was tried, not the
    engine's error (which the memory manager logged where it failed)."""
    return [{**entry, "action": _without_cause(entry["action"])} for entry in entries]


def _without_cause(action: str | None) -> str | None:
    """``erase slot 2 failed (BackendDown: ... http://10.0.0.7 ...)`` and ``failed: ...``
    (``runtime.memory``'s and ``runtime.records``' forms) without their cause."""
    hidden = "failed; the cause is in the proxy's log"
    if action is None:
        return None
    if action.startswith("failed: "):
        return hidden
    tried, failed, _ = action.partition(" failed (")
    return f"{tried} {hidden}" if failed else action
