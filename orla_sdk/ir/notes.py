"""Typed notes the passes leave on stage nodes.

A pass writes its note into ``node.meta`` (so a plan's JSON stays plain data) through
``write``; readers take it back, typed, through ``mapping_of``, ``priority_of`` and
``cache_of``. A node a pass has not annotated has no note: the readers return None.
Notes are frozen; a reader parses a note once and gives the same object back while the
node's data for it is unchanged (the runtime reads them on every stage run).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from orla_sdk.ir.plan import Node

NEUTRAL_PRIORITY = 50
"""The priority of a stage with no hint, on the 0..100 scale where higher goes first."""

CacheDecision = Literal["preserve", "flush", "deferred"]
N = TypeVar("N", bound="_Note")


class _Note(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: Any = None  # the meta key a note lives under; set by each note class

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude={"key"})

    def dump_key(self) -> str:
        return str(self.key)


class Candidate(BaseModel):
    """One target a routed stage may go to."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    logical: str
    backend: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)


class MappingNote(_Note):
    """Where a stage runs: one backend and model, or a mapper's choice among candidates."""

    key: Literal["mapping"] = "mapping"
    logical: str | None
    routed: bool
    backend: str | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    mapper: str | None = None
    candidates: list[Candidate] | None = None

    def target_key(self) -> str | None:
        """"backend/model" of a statically mapped stage; None for a routed one."""
        return None if self.routed else f"{self.backend}/{self.model}"


class PriorityNote(_Note):
    """A stage's priority: a static hint, a rule evaluated at run time, or the neutral one."""

    key: Literal["priority"] = "priority"
    value: int = NEUTRAL_PRIORITY
    source: Literal["static", "runtime", "graph"]
    critical_path: int = 0
    rule: dict[str, Any] | None = None
    reason: str | None = None


class CacheNote(_Note):
    """Whether a stage's backend keeps its KV cache for the next stage, and why."""

    key: Literal["cache"] = "cache"
    decision: CacheDecision
    reason: str
    span: str | None = None


def write(node: Node, note: _Note) -> None:
    node.meta[note.dump_key()] = note.dump()


_MAX_PARSED = 4096
# (id of a note's data, meta key) -> (a copy of that data, the note parsed from it)
_parsed: dict[tuple[int, str], tuple[Any, Any]] = {}


def _read(node: Node, kind: type[N], key: str) -> N | None:
    data = node.meta.get(key)
    if data is None:
        return None
    hit = _parsed.get((id(data), key))
    if hit is not None and hit[0] == data:  # equal data, even if edited in place: same note
        note: N = hit[1]
        return note
    note = kind.model_validate(data)
    if len(_parsed) >= _MAX_PARSED:
        _parsed.clear()
    _parsed[(id(data), key)] = (copy.deepcopy(data), note)
    return note


def mapping_of(node: Node) -> MappingNote | None:
    return _read(node, MappingNote, "mapping")


def priority_of(node: Node) -> PriorityNote | None:
    return _read(node, PriorityNote, "priority")


def cache_of(node: Node) -> CacheNote | None:
    return _read(node, CacheNote, "cache")
