"""Stage mapping: which backend and model serve a stage's logical model name.

A logical name ("light", "heavy") maps either to a fixed ``Target`` or to a
``StageMapper`` that picks one of its candidate names for each request at run time.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from orla_sdk.errors import OrlaError
from orla_sdk.ir import MapperSpec, Target
from orla_sdk.refs import is_importable, load_ref, ref_of

Ask = Callable[[str, str], Awaitable[str]]
"""``await ask(logical_name, prompt)``: the runtime's way for a mapper to query a model."""


class StageMapper(BaseModel):
    """Base class of run-time routers. Subclasses are pydantic models, so the plan can
    record their configuration and the runtime can rebuild them from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = "custom"

    def candidates(self) -> list[str]:
        """The logical model names this mapper may choose; each must map to a Target."""
        raise NotImplementedError

    def consults(self) -> list[str]:
        """The logical model names ``choose`` asks through ``ask``; each must be mapped."""
        return []

    async def choose(self, prompt: str, ask: Ask) -> str:
        """Pick one of ``candidates()`` for this prompt."""
        raise NotImplementedError

    def to_spec(self) -> MapperSpec:
        return MapperSpec(ref=ref_of(type(self)), name=self.kind,
                          config=self.model_dump(mode="json"), candidates=self.candidates(),
                          consults=self.consults())


class OneBitStageMapper(StageMapper):
    """A light model answers one bit, simple or complex; the request then goes to
    ``simple`` or ``complex``. An answer that is neither counts as complex."""

    kind: ClassVar[str] = "one_bit"
    judge: str = "light"
    simple: str = "light"
    complex: str = "heavy"
    instruction: str = ("Is the following request simple or complex to answer? "
                        "Reply with exactly one word: simple or complex.\n\n")

    def candidates(self) -> list[str]:
        return _unique([self.simple, self.complex])

    def consults(self) -> list[str]:
        return [self.judge]

    async def choose(self, prompt: str, ask: Ask) -> str:
        answer = await ask(self.judge, self.instruction + prompt)
        return self.simple if parse_bit(answer) == 0 else self.complex


def parse_bit(answer: str) -> int | None:
    """0 for simple, 1 for complex, None when the answer says neither."""
    match = re.search(r"\b(simple|complex|0|1)\b", answer.lower())
    if match is None:
        return None
    return 0 if match.group(1) in ("simple", "0") else 1


def prompt_words(prompt: str) -> float:
    """Default score for ``ThresholdStageMapper``: the prompt's length in words."""
    return float(len(prompt.split()))


class ThresholdStageMapper(StageMapper):
    """Score the prompt; at or above ``threshold`` it goes to ``above``, else ``below``."""

    kind: ClassVar[str] = "threshold"
    threshold: float
    below: str = "light"
    above: str = "heavy"
    score: str = "orla_sdk.mapping:prompt_words"

    @field_validator("score", mode="before")
    @classmethod
    def _score_ref(cls, value: Any) -> Any:
        ref = value if isinstance(value, str) else ref_of(value)
        if not is_importable(ref):
            raise ValueError(f"score function {ref!r} must be defined at module level so "
                             "the plan can name it")
        return ref

    def candidates(self) -> list[str]:
        return _unique([self.below, self.above])

    async def choose(self, prompt: str, ask: Ask) -> str:
        score = float(load_ref(self.score)(prompt))
        return self.above if score >= self.threshold else self.below


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def normalize_mapping(mapping: Mapping[str, Any]) -> dict[str, Target | MapperSpec]:
    """Accept ``Target``, ``"backend/model"`` strings, mappers and their specs."""
    out: dict[str, Target | MapperSpec] = {}
    for name, value in mapping.items():
        if isinstance(value, (Target, MapperSpec)):
            out[name] = value
        elif isinstance(value, StageMapper):
            out[name] = value.to_spec()
        elif isinstance(value, str) and "/" in value:
            backend, model = value.split("/", 1)
            out[name] = Target(backend=backend, model=model)
        else:
            raise OrlaError(
                f"mapping for {name!r} is {value!r}; give an orla.Target(backend=..., "
                "model=...), a 'backend/model' string, or a StageMapper.")
    return out
