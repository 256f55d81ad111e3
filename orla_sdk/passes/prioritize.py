"""Priority hints, on a 0..100 scale where higher is served first.

- A static ``priority=N`` on the stage wins.
- A rule (``orla.priority_by`` or a function) is evaluated at run time from the stage's
  arguments; the plan records the rule.
- Otherwise the default comes from the graph: the number of stages on the longest path
  from this stage to the end of the workflow, itself included (critical-path first), so
  stages that hold up more downstream work are served earlier. Past 100 the value stays
  at 100; ``meta["priority"]["critical_path"]`` keeps the unclamped length for
  tie-breaking.
"""

from __future__ import annotations

from orla_sdk.ir import PRIORITY_RANGE, Plan, PriorityRule


def prioritize(plan: Plan) -> Plan:
    remaining = critical_path_lengths(plan)
    low, high = PRIORITY_RANGE
    for node in plan.stage_nodes():
        hint = plan.stage_of(node).priority
        if isinstance(hint, int):
            node.meta["priority"] = {"value": hint, "source": "static"}
        elif isinstance(hint, PriorityRule):
            node.meta["priority"] = {"source": "runtime", "rule": hint.model_dump(mode="json"),
                                     "value": hint.default}
        else:
            length = remaining[node.id]
            node.meta["priority"] = {
                "value": max(low, min(high, length)), "source": "graph", "critical_path": length,
                "reason": f"{length} stage(s) on the longest path from here to the end"}
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
