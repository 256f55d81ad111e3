"""Stage mapping: record which backend and model serve each stage, or that a mapper
routes it at run time and between which candidates."""

from __future__ import annotations

from orla_sdk.ir import Candidate, MapperSpec, MappingNote, Plan, Target, write


def map_stages(plan: Plan) -> Plan:
    for node in plan.stage_nodes():
        name = plan.logical_model(node)
        mapped = plan.mapping.get(name) if name else None
        if isinstance(mapped, Target):
            write(node, MappingNote(logical=name, routed=False, backend=mapped.backend,
                                    model=mapped.model, params=mapped.params))
        elif isinstance(mapped, MapperSpec):
            candidates = [Candidate(logical=c, backend=t.backend, model=t.model, params=t.params)
                          for c in mapped.candidates
                          if isinstance(t := plan.mapping.get(c), Target)]
            write(node, MappingNote(logical=name, routed=True, mapper=mapped.name,
                                    candidates=candidates))
    return plan
