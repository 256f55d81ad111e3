"""A tutoring workflow whose stages alternate between models, so cache spans break
and resume.

Two light stages restate a question and plan a solution: one preserve span on the
light backend. A heavy stage solves it, and then two light stages explain and simplify
the solution: a second, separate span on the light backend, since nothing there
extends the first one. The heavy stage asks for ``cache="preserve"``, keeping its
context until the run ends; without the hint the compiler would flush it as the work
moves back to the light backend. The hint wins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

import orla_sdk as orla

Level = Literal["primary", "secondary", "university"]


class Solution(BaseModel):
    answer: str
    steps: list[str]
    confident: bool


@orla.stage(model="light")
def restate(question: str) -> str:
    """Restate the question in one precise sentence."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light")
def plan_solution(question: str, restated: str) -> list[str]:
    """List the steps a solution will take."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy", cache="preserve")
def solve(question: str, plan: list[str]) -> Solution:
    """Carry out the plan and solve the question."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light")
def explain(solution: Solution) -> str:
    """Explain the solution step by step."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light")
def simplify(explanation: str, level: Level) -> str:
    """Rewrite the explanation for a student at the given level."""
    raise NotImplementedError("runs on an engine")


BACKENDS = [
    orla.backends.llamacpp("laptop"),
    orla.backends.sglang("gpu-server", "http://127.0.0.1:30000/v1", models=["Qwen/Qwen3-32B"]),
]
MAPPING = {
    "light": orla.Target(backend="laptop", model=orla.backends.DEFAULT_LOCAL_MODEL),
    "heavy": orla.Target(backend="gpu-server", model="Qwen/Qwen3-32B"),
}


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def mixed_models(question: str, level: Level) -> str:
    restated = restate(question)
    plan = plan_solution(question, restated)
    solution = solve(question, plan)
    explanation = explain(solution)
    return simplify(explanation, level)
