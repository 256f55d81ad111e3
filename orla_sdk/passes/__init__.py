"""Compiler passes: each a plain function from plan to plan, run in list order.

A pass may change the plan it is given (``orla.compile`` hands the pipeline a fresh one)
and returns it. Extend the pipeline with ``orla.compile(wf, passes=[*DEFAULT_PASSES, mine])``.
"""

from collections.abc import Callable, Sequence

from orla_sdk.ir import Plan
from orla_sdk.passes.cache_spans import cache_spans
from orla_sdk.passes.map_stages import map_stages
from orla_sdk.passes.prioritize import prioritize
from orla_sdk.passes.validate import validate

Pass = Callable[[Plan], Plan]

DEFAULT_PASSES: list[Pass] = [validate, map_stages, prioritize, cache_spans]


def run_passes(plan: Plan, passes: Sequence[Pass] | None = None) -> Plan:
    """Run ``passes`` (``DEFAULT_PASSES`` when None) over ``plan``, in order: the one pass
    loop of orla."""
    for run_pass in DEFAULT_PASSES if passes is None else passes:
        plan = run_pass(plan)
    return plan


__all__ = ["DEFAULT_PASSES", "Pass", "cache_spans", "map_stages", "prioritize", "run_passes",
           "validate"]
