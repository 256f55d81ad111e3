"""Stage mapping: record which backend and model serve each stage, or that a mapper
routes it at run time and between which candidates."""

from __future__ import annotations

from typing import Any

from orla_sdk.ir import MapperSpec, Plan, Target


def map_stages(plan: Plan) -> Plan:
    for node in plan.stage_nodes():
        name = plan.logical_model(node)
        mapped = plan.mapping.get(name) if name else None
        if isinstance(mapped, Target):
            node.meta["mapping"] = {"logical": name, "routed": False, **_target(mapped)}
        elif isinstance(mapped, MapperSpec):
            candidates = [{"logical": c, **_target(t)}
                          for c in mapped.candidates
                          if isinstance(t := plan.mapping.get(c), Target)]
            node.meta["mapping"] = {"logical": name, "routed": True, "mapper": mapped.name,
                                    "candidates": candidates}
    return plan


def _target(target: Target) -> dict[str, Any]:
    return {"backend": target.backend, "model": target.model, "params": target.params}


def target_key(meta: dict[str, Any]) -> str | None:
    """"backend/model" of a statically mapped stage; None for routed or unmapped ones."""
    mapping = meta.get("mapping")
    if not mapping or mapping.get("routed"):
        return None
    return f"{mapping['backend']}/{mapping['model']}"
