"""Stages for the generated workflows of test_plan_properties: plain, deterministic
functions of their input, so a workflow's plain-Python result is the truth a compiled
run must equal. The generated workflow modules import this one by name."""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.stage import Stage

KINDS = ("a", "b", "c")


class Out(BaseModel):
    text: str
    kind: Literal["a", "b", "c"]
    flag: bool
    items: list[str]
    maybe: str | None


def _out(stage: int, text: str) -> Out:
    h = zlib.crc32(f"{stage}:{text}".encode())
    return Out(text=f"s{stage}({text})"[:60], kind=KINDS[h % 3], flag=bool(h >> 2 & 1),
               items=[f"{text[:8]}#{i}" for i in range(h >> 3 & 3)],
               maybe=None if h >> 5 & 1 else text[:10])


def _make(stage: int) -> Stage[[str], Out]:
    def body(text: str) -> Out:
        return _out(stage, text)

    body.__name__ = body.__qualname__ = f"s{stage}"
    return orla.stage(model="m")(body)


s0, s1, s2, s3, s4, s5 = (_make(i) for i in range(6))
STAGES = (s0, s1, s2, s3, s4, s5)


@orla.stage(model="m")
def join(parts: list[Out]) -> Out:
    return _out(99, "|".join(p.text for p in parts))


TABLE = {"a": s3, "b": s4, "c": s5}
