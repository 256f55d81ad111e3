"""What a workflow run reports: one record per stage run, and the run's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Required, TypedDict

from orla_sdk.errors import RunError

StageStatus = Literal["done", "skipped", "failed"]


class CacheLogEntry(TypedDict, total=False):
    """One cache action of a run: the stage it followed (None at a pause or the run's end),
    the backend, the decision and its reason, what was done, and for a stage its item in a
    loop and the tokens its first call found cached."""

    node: Required[str | None]
    backend: Required[str | None]
    decision: Required[str]
    reason: Required[str]
    action: Required[str | None]
    item: int | None
    cached_tokens: int


def failed_cache_action(error: BaseException, *, decision: str = "flush",
                        reason: str = "end of workflow") -> CacheLogEntry:
    """The cache-log entry of a run-level cache action that failed (``error``): the run's
    answer stands, the failure is the log's."""
    return {"node": None, "backend": getattr(error, "backend", None), "decision": decision,
            "reason": reason, "action": f"failed: {error}"}


@dataclass
class CallRecord:
    """One model call made by a stage, with the engine's own counters."""

    backend: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_wait_s: float
    ttft_s: float | None  # None where the engine was asked for an unstreamed reply
    duration_s: float
    slot: int | None = None
    started_at: float = 0.0  # wall-clock seconds (time.time()) when the call was made
    attempts: int = 1  # the engine was asked this many times (the pool's retries)


@dataclass
class StageRecord:
    node: str
    stage: str
    status: StageStatus = "done"
    item: int | None = None  # the item's index, for stages inside a map
    calls: list[CallRecord] = field(default_factory=list)
    duration_s: float = 0.0
    cache_action: str = ""
    routed_to: str | None = None  # the logical model a mapper picked
    rerouted_to: str | None = None  # the alternative taken because a queue was full
    error: str | None = None
    agent: str = ""  # the declared agent that made its calls ("": the stage itself)
    restored: bool = False  # completed by an earlier attempt of the run (a checkpoint)
    tool_calls: int = 0  # tools its model called that ran
    tools_reused: int = 0  # tool calls answered with an equal earlier call's result
    refused: int = 0  # tool calls an agent policy refused (budgets, permissions)

    @property
    def backend(self) -> str | None:
        return self.calls[-1].backend if self.calls else None

    @property
    def model(self) -> str | None:
        return self.calls[-1].model if self.calls else None

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def cached_tokens(self) -> int:
        return sum(c.cached_tokens for c in self.calls)

    @property
    def queue_wait_s(self) -> float:
        return sum(c.queue_wait_s for c in self.calls)

    @property
    def ttft_s(self) -> float | None:
        return self.calls[0].ttft_s if self.calls else None


@dataclass
class RunResult:
    run_id: str
    workflow: str
    output: Any = None
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    branches: dict[str, Any] = field(default_factory=dict)
    cache_log: list[CacheLogEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def stage(self, node: str) -> StageRecord:
        for record in self.stages:
            if record.node == node:
                return record
        raise KeyError(f"run {self.run_id} has no record of node {node!r}")

    def raise_for_error(self) -> RunResult:
        if self.error is not None:
            raise RunError(self)
        return self
