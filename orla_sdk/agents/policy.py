"""The policy protocol of the agent layer, and the layer that runs policies.

A policy is a small class that implements the primitives it needs:

- ``observe(event)``: every ``AgentEvent`` from both seams;
- ``keep_scores(candidates)``: at an eviction decision, a score for each cached context
  (higher is kept longer); ``None`` leaves the decision to the next policy;
- ``predict_next(key)``: the next agent of ``key.run``, as probabilities;
- ``prefetch(key)``: after ``key``'s call, the agents whose contexts to warm now;
- ``cache_choice(event)``: when a stage finishes, keep or drop its context
  (``memory_policy``); ``None`` leaves it to the next policy, then the plan;
- ``queue_key(waiting)``: a sort key for a call waiting at a backend (smallest first);
  ``None`` leaves the order to the next policy, then the backend's own scheduling;
- ``admit(request)``: before a model call is queued or a tool runs, a refusal (what rule
  it breaks, and its limit) or ``None``; the first refusal wins;
- ``tool_result(use)``: before a tool runs, a result to give the model instead (an equal
  earlier call's), or ``None``.

The backends act on the answers with what each engine really supports (``docs/agents.md``).
``AgentLayer`` asks its policies in order; a policy that raises is switched off with a
warning and the run goes on with the others, then with least-recently-used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey

if TYPE_CHECKING:
    from orla_sdk.agents.memory_policy import CacheChoice, CacheEvent

log = logging.getLogger("orla_sdk.agents")
A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Cached:
    """A cached context at an eviction decision: the agent it belongs to (``None``: an
    unknown one), the cache events since it was last used, and what to act on."""

    key: AgentKey | None
    age: int
    ref: Hashable = None


class Queued(Protocol):
    """A call waiting for a turn at a backend, as a policy may order it."""

    backend: str
    agent: AgentKey | None
    stage: str
    run_id: str
    priority: int
    critical_path: int
    prompt_length: int
    seq: int


@dataclass(frozen=True)
class Admission:
    """A model call (``kind="call"``: ``backend``, ``tokens`` it may use at most, prompt
    and reply) or a tool call (``kind="tool"``: ``tool``) about to start."""

    kind: Literal["call", "tool"]
    key: AgentKey
    backend: str | None = None
    tokens: int = 0
    tool: str | None = None


@dataclass(frozen=True)
class ToolUse:
    """A tool call about to run: its ``arguments`` as canonical JSON, and what its
    declaration allows (``pure``: equal arguments give equal results, for ``ttl_s``
    seconds where given; ``effect``: it changes the world)."""

    key: AgentKey
    tool: str
    arguments: str
    pure: bool = False
    ttl_s: float | None = None
    effect: bool = False


class AgentPolicy:
    """Implements no primitive; subclasses implement those they need."""

    name = "policy"

    def observe(self, event: AgentEvent) -> None:
        return None

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        return None

    def predict_next(self, key: AgentKey) -> dict[str, float]:
        return {}

    def prefetch(self, key: AgentKey) -> list[str]:
        return []

    def cache_choice(self, event: CacheEvent) -> CacheChoice | None:
        return None

    def queue_key(self, waiting: Queued) -> Any:
        return None

    def admit(self, request: Admission) -> str | None:
        return None

    def tool_result(self, use: ToolUse) -> str | None:
        return None


class AgentLayer:
    """Policies in order of precedence, with the failures of each kept apart."""

    def __init__(self, policies: Sequence[AgentPolicy] = ()) -> None:
        self.disabled: dict[str, str] = {}  # policy name -> why it was switched off
        self._use(tuple(policies))

    def _use(self, policies: tuple[AgentPolicy, ...]) -> None:
        self.policies = policies
        self._implementing: dict[str, tuple[AgentPolicy, ...]] = {}
        # whether a policy observes events: callers on hot paths build none otherwise
        self.observing = bool(self.implementing("observe"))

    def implementing(self, primitive: str) -> tuple[AgentPolicy, ...]:
        """The policies, in order, that implement ``primitive`` (``AgentPolicy``'s own
        methods answer nothing, so the layer does not ask the others)."""
        found = self._implementing.get(primitive)
        if found is None:
            base = getattr(AgentPolicy, primitive)
            found = self._implementing[primitive] = tuple(
                p for p in self.policies if getattr(type(p), primitive, base) is not base)
        return found

    def observe(self, event: AgentEvent) -> None:
        for policy in self.implementing("observe"):
            self._guarded(policy, policy.observe, event)

    def victim(self, candidates: Sequence[Cached]) -> Cached:
        """The context to evict: lowest score of the first policy that scores, the oldest
        among equal scores; the oldest of all where no policy scores."""
        if not candidates:
            raise ValueError("no cached context to choose a victim from")
        scores = self.keep_scores(candidates)
        if scores is None:
            return max(candidates, key=lambda c: c.age)
        best = min(range(len(candidates)), key=lambda i: (scores[i], -candidates[i].age))
        return candidates[best]

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        for policy in self.implementing("keep_scores"):
            scores = self._guarded(policy, _listed_scores(policy), candidates)
            if scores is not None:
                if len(scores) != len(candidates):
                    self._disable(policy, f"scored {len(scores)} of {len(candidates)} "
                                  "candidates")
                    continue
                return scores
        return None

    def predict_next(self, key: AgentKey) -> dict[str, float]:
        for policy in self.implementing("predict_next"):
            prediction = self._guarded(policy, policy.predict_next, key)
            if prediction:
                return dict(prediction)
        return {}

    def prefetch(self, key: AgentKey) -> list[str]:
        wanted: list[str] = []
        for policy in self.implementing("prefetch"):
            for agent in self._guarded(policy, policy.prefetch, key) or []:
                if agent not in wanted:
                    wanted.append(agent)
        return wanted

    def cache_choice(self, event: CacheEvent) -> CacheChoice | None:
        return self._first_answer("cache_choice", event)  # type: ignore[no-any-return]

    def queue_key(self, waiting: Queued) -> Any:
        """The first policy's sort key for ``waiting``; None where no policy orders."""
        return self._first_answer("queue_key", waiting)

    def admit(self, request: Admission) -> str | None:
        """The first policy's refusal of ``request``; None where every policy admits it."""
        return self._first_answer("admit", request)  # type: ignore[no-any-return]

    def tool_result(self, use: ToolUse) -> str | None:
        """A result to give instead of running the tool; None to run it."""
        return self._first_answer("tool_result", use)  # type: ignore[no-any-return]

    def _first_answer(self, primitive: str, argument: Any) -> Any:
        """The first answer that is not None, asking the policies in order."""
        for policy in self.implementing(primitive):
            answer = self._guarded(policy, getattr(policy, primitive), argument)
            if answer is not None:
                return answer
        return None

    def _guarded(self, policy: AgentPolicy, method: Callable[[A], R], argument: A) -> R | None:
        try:
            return method(argument)
        except Exception as exc:
            self._disable(policy, f"{type(exc).__name__}: {exc}")
            return None

    def _disable(self, policy: AgentPolicy, why: str) -> None:
        if policy in self.policies:
            self._use(tuple(p for p in self.policies if p is not policy))
            self.disabled[policy.name] = why
            log.warning("agent policy %r raised and is switched off (%s); the run goes on "
                        "without it", policy.name, why)

    def __bool__(self) -> bool:
        return bool(self.policies)


def _listed_scores(policy: AgentPolicy) -> Callable[[Sequence[Cached]], list[float] | None]:
    """``policy.keep_scores`` as a list, so that a malformed answer fails in the guard."""
    def scores(candidates: Sequence[Cached]) -> list[float] | None:
        answer = policy.keep_scores(candidates)
        return None if answer is None else [float(score) for score in answer]
    return scores
