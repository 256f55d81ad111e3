"""A DAG-MATH-style solution: thirty reasoning steps that form a DAG, not a chain.

Every step is a call of the same stage. It takes the problem text first (the prompt
prefix all steps share, so a backend can keep it cached) and the conclusions of the
earlier steps it builds on. Steps 0 to 2 start from the problem alone; step i builds
on step i - 3 and on step i // 2, so conclusions fan out to several later steps and
steps join several earlier ones. The steps nothing builds on feed the final answer.
"""

from __future__ import annotations

import orla_sdk as orla

STEPS = 30
ROOTS = 3


def dependencies(index: int) -> tuple[int, ...]:
    """The earlier steps that step ``index`` builds on."""
    if index < ROOTS:
        return ()
    return tuple(sorted({index - ROOTS, index // 2}))


DEPENDENCIES = [dependencies(i) for i in range(STEPS)]
FINAL_STEPS = [i for i in range(STEPS) if not any(i in deps for deps in DEPENDENCIES)]


STEP_TOKENS = 12


@orla.stage(model="math")
def step(problem: str, index: int, premises: list[str]) -> str:
    """Derive one new conclusion about the problem from the given premises."""
    given = "\n".join(f"- {p}" for p in premises) or "- (none yet)"
    return orla.generate(f"Problem:\n{problem}\n\nKnown so far:\n{given}\n\n"
                         f"Step {index}: state one new fact in one short sentence.",
                         max_tokens=STEP_TOKENS)


@orla.stage(model="math")
def answer(problem: str, conclusions: list[str]) -> str:
    """State the final answer from the last conclusions of the derivation."""
    given = "\n".join(f"- {c}" for c in conclusions)
    return orla.generate(f"Problem:\n{problem}\n\nConclusions:\n{given}\n\n"
                         "State the final answer in one sentence.", max_tokens=2 * STEP_TOKENS)


BACKENDS = [orla.backends.llamacpp("local")]
MAPPING = {"math": orla.Target(backend="local", model=orla.backends.DEFAULT_LOCAL_MODEL,
                               params={"temperature": 0.0})}


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def dag_math(problem: str) -> str:
    conclusions: list[str] = []
    for index, deps in enumerate(DEPENDENCIES):
        conclusions.append(step(problem, index, [conclusions[d] for d in deps]))
    return answer(problem, [conclusions[i] for i in FINAL_STEPS])
