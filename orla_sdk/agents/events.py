"""What the agent layer observes, from both seams (orla's runtime and the engines),
each event tagged with the agent it concerns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orla_sdk.agents.identity import AgentKey

AgentEventKind = Literal[
    "call_queued", "call_started", "first_token", "call_finished",  # model calls
    "call_failed",
    "tool_started", "tool_ended", "tool_reused",                     # tools
    "refused",                                                       # a policy said no
    "turn",                                                          # an agent takes a turn
    "kv_usage", "slot_saved", "slot_restored", "slot_erased",       # engine state
    "prefetch",                                                      # a warm-up was sent
]


@dataclass(frozen=True)
class AgentEvent:
    """``kind`` happened to ``key``'s agent on ``backend``. ``data`` carries what the kind
    has: ``admitted_tokens`` (what it may use) for a queued, finished or failed call;
    ``seq`` (its arrival at the backend's queue) and ``retry`` for a started one;
    ``prompt_tokens``, ``cached_tokens``, ``completion_tokens``, ``ttft_s`` (None for an
    unstreamed call), ``tool_calls`` for a finished call; ``tool``, and when it ended
    ``duration_s``, ``arguments`` (canonical JSON), ``result`` and ``failed``, for a tool
    (``tool_reused``: a result given again);
    ``rule`` for a refusal; ``slot``, ``tokens`` for slot actions; ``usage`` for KV usage.
    Events from the runtime carry ``at``, the pool's clock in seconds. A warm-up request
    (``warmup=True``) is never an agent's turn."""

    kind: AgentEventKind
    key: AgentKey
    backend: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def warmup(self) -> bool:
        return bool(self.data.get("warmup"))

    @property
    def served_tokens(self) -> int:
        """A finished call's prompt and completion tokens."""
        return int(self.data.get("prompt_tokens", 0)) + int(self.data.get("completion_tokens", 0))
