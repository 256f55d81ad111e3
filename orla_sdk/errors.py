"""Every exception orla raises, in one place; each is an ``OrlaError``.

    OrlaError
    ├── TraceError            a workflow did something tracing cannot turn into a plan
    ├── RefError              a "module:qualname" reference does not resolve
    ├── PlanValidationError   a plan has problems (each a ``Problem``: node, line, fix)
    ├── AdapterNotFound       no installed adapter takes an app object
    ├── MissingExtra          an optional dependency is not installed
    ├── BackendError          an engine could not serve a request
    │   └── BackendDown       its engine refused the connection or answered 502-504
    ├── EngineError           the embedded engine cannot be found, started or reached
    ├── OutputError           a model kept answering in a shape the output type forbids
    ├── Refused               an agent policy refused a model call (a budget, a permission)
    ├── StageFailed           one stage of a run failed
    └── RunError              a workflow run failed (``result`` holds its records)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orla_sdk.runtime.records import RunResult


class OrlaError(Exception):
    """Base class of every error raised by orla_sdk."""


class TraceError(OrlaError):
    """A workflow did something while being traced that cannot become a plan."""


class RefError(OrlaError):
    """A dotted reference ("module:qualname") cannot be resolved or created."""


@dataclass(frozen=True)
class Problem:
    """One defect of a plan: where it is, what is wrong, and how to fix it."""

    node: str
    site: str | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f" ({self.site})" if self.site else ""
        return f"{self.node}{where}: {self.message} Fix: {self.fix}"


class PlanValidationError(OrlaError):
    """A plan has one or more problems; all of them are listed together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the plan has {len(problems)} problem(s):\n{lines}")


class AdapterNotFound(OrlaError):
    """No installed adapter accepts an app object given to compile, render or serve."""


class MissingExtra(OrlaError):
    """An optional dependency is not installed; the message names the ``pip install``."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        self.module, self.extra = module, extra
        super().__init__(f"{purpose} needs the {module!r} package, which is not installed; "
                         f"install it with `pip install 'orla_sdk[{extra}]'`.")


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise ``MissingExtra`` unless ``module`` is installed."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(module, extra, purpose)


class BackendError(OrlaError):
    """A backend could not serve a request: down, timed out, or answered with an error."""

    def __init__(self, backend: str, message: str, *, retryable: bool,
                 status: int | None = None) -> None:
        self.backend = backend
        self.retryable = retryable
        self.status = status  # the engine's HTTP status, when it answered with an error
        self.detail = message  # the message without the backend's name
        super().__init__(f"backend {backend!r}: {message}")


class BackendDown(BackendError):
    """A backend's engine refused the connection or answered 502, 503 or 504: it may be
    starting or restarting, so the pool waits for it (``BackendPool(engine_down_s=...)``)."""

    def __init__(self, backend: str, message: str, *, status: int | None = None) -> None:
        super().__init__(backend, message, retryable=True, status=status)


class EngineError(OrlaError):
    """The embedded engine cannot be found, started, reached or stopped."""


class OutputError(OrlaError):
    """A stage's model kept answering in a shape its output type does not allow."""


class Refused(OrlaError):
    """An agent policy refused a model call: the message names the agent, the rule and its
    limit."""


class StageFailed(OrlaError):
    """One stage of a run failed; the run's ``RunError`` says which and why."""

    def __init__(self, node: str, cause: BaseException) -> None:
        self.node = node
        super().__init__(f"stage {node!r} failed: {type(cause).__name__}: {cause}")


class RunError(OrlaError):
    """A workflow run failed; ``result`` holds every stage record up to the failure."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(f"run {result.run_id} of {result.workflow!r} failed: {result.error}")
