"""Priority hints, on a 0..100 scale where higher is served first.

- A static ``priority=N`` on the stage wins.
- A rule (``orla.priority_by`` or a function) is evaluated at run time from the stage's
  arguments; the plan records the rule, and its default stands in until then.
- A stage without a hint gets the neutral 50.

Every stage also records ``critical_path``: the number of stages on the longest path
from it to the end of the workflow, itself included. Among equal priorities, a scheduler
serves the longer critical path first, so stages that hold up more downstream work go
earlier. Stages without hints are thus ordered by the graph alone, and a hint above or
below 50 moves a stage ahead of or behind them.
"""

from __future__ import annotations

from orla_sdk.ir import NEUTRAL_PRIORITY, Plan, PriorityNote, PriorityRule, write


def prioritize(plan: Plan) -> Plan:
    remaining = critical_path_lengths(plan)
    for node in plan.stage_nodes():
        hint = plan.stage_of(node).priority
        path = remaining[node.id]
        if isinstance(hint, int):
            note = PriorityNote(value=hint, source="static", critical_path=path)
        elif isinstance(hint, PriorityRule):
            note = PriorityNote(value=hint.default, source="runtime", critical_path=path,
                                rule=hint.model_dump(mode="json", exclude_defaults=True))
        else:
            note = PriorityNote(
                value=NEUTRAL_PRIORITY, source="graph", critical_path=path,
                reason=f"no hint; {path} stage(s) on the longest path from here to the end")
        write(node, note)
    return plan


def critical_path_lengths(plan: Plan) -> dict[str, int]:
    """For every node, the most stages on any path from it to the end (itself included)."""
    successors = plan.successors()
    lengths: dict[str, int] = {}
    for node in reversed(plan.topological_order()):
        own = 1 if node.kind == "stage" else 0
        lengths[node.id] = own + max((lengths.get(s, 0) for s in successors[node.id]),
                                     default=0)
    return lengths
