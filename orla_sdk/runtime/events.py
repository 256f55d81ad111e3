"""What a run reports while it runs: a stream of events for live views and logs.

``orla.arun(plan, on_event=callback)`` calls ``callback`` on the event loop for each
event; a callback that raises is dropped from the run, never the run from the callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["stage_start", "stage_end", "call", "token", "tool_call", "branch",
                    "cache", "run_end"]


@dataclass(frozen=True)
class RunEvent:
    kind: EventKind
    run_id: str
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[RunEvent], None]


class Emitter:
    """Hands a run's events to its listener; a failing listener is switched off."""

    def __init__(self, run_id: str, listener: Listener | None) -> None:
        self.run_id = run_id
        self._listener = listener
        self.active = listener is not None  # read before building an event's keywords
        self.error: str | None = None

    def __call__(self, kind: EventKind, node: str | None = None, /, **data: Any) -> None:
        if self._listener is None:
            return
        try:
            self._listener(RunEvent(kind, self.run_id, node, data))
        except Exception as exc:
            self._listener, self.active = None, False
            self.error = f"the event listener raised {type(exc).__name__}: {exc}; it was removed"
