"""The error hierarchy: every failure orla raises is an ``OrlaError``."""

from __future__ import annotations

from dataclasses import dataclass


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
