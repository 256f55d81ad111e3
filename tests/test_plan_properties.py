"""Property tests: random workflows (branches on bool and Literal fields, dispatch tables,
ternary callees, maps, orla.is_none) compile to plans that behave exactly as the plain
Python call does, compile to the same JSON twice, and survive a JSON round trip."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import orla_sdk as orla
from orla_sdk.runtime import SQLiteCheckpoints

SOURCES = Path(tempfile.mkdtemp(prefix="orla-property-workflows-"))
_numbers = itertools.count()
N_STAGES = 6
TEXTS = ["refund my order", "the app crashes", "hello", "x" * 30]


class Writer:
    """Writes one random workflow body as Python source."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.lines: list[str] = []
        self.names = itertools.count()

    def var(self) -> str:
        return f"v{next(self.names)}"

    def text_of(self, outputs: list[str]) -> str:
        return self.draw(st.sampled_from(["text", *[f"{v}.text" for v in outputs]]))

    def block(self, indent: int, outputs: list[str], depth: int) -> None:
        for _ in range(self.draw(st.integers(1, 3))):
            self.statement(indent, outputs, depth)

    def statement(self, indent: int, outputs: list[str], depth: int) -> None:
        kinds = ["call", "dispatch", "ternary", "map", "loop"] if outputs else ["call"]
        if outputs and depth < 2:
            kinds += ["if_flag", "if_kind", "if_none"]
        kind = self.draw(st.sampled_from(kinds))
        made = getattr(self, kind)(" " * indent, indent, list(outputs), depth)
        if made is not None:
            outputs.append(made)

    def emit(self, pad: str, line: str) -> None:
        self.lines.append(pad + line)

    def call(self, pad: str, indent: int, outputs: list[str], depth: int) -> str:
        stage = self.draw(st.integers(0, N_STAGES - 1))
        v = self.var()
        self.emit(pad, f"{v} = s{stage}({self.text_of(outputs)})")
        self.emit(pad, f"out.append({v}.text)")
        return v

    def dispatch(self, pad: str, indent: int, outputs: list[str], depth: int) -> str:
        on, v = self.draw(st.sampled_from(outputs)), self.var()
        self.emit(pad, f"{v} = TABLE[{on}.kind]({self.text_of(outputs)})")
        self.emit(pad, f"out.append({v}.text)")
        return v

    def ternary(self, pad: str, indent: int, outputs: list[str], depth: int) -> str:
        on = self.draw(st.sampled_from(outputs))
        a, b = self.draw(st.lists(st.integers(0, N_STAGES - 1), min_size=2, max_size=2))
        v = self.var()
        self.emit(pad, f"{v} = (s{a} if {on}.flag else s{b})({self.text_of(outputs)})")
        self.emit(pad, f"out.append({v}.text)")
        return v

    def map(self, pad: str, indent: int, outputs: list[str], depth: int) -> str:
        on, v = self.draw(st.sampled_from(outputs)), self.var()
        stage = self.draw(st.integers(0, N_STAGES - 1))
        inner = self.draw(st.sampled_from(["item", f"s{(stage + 1) % N_STAGES}(item).text"]))
        self.emit(pad, f"{v} = join([s{stage}({inner}) for item in {on}.items])")
        self.emit(pad, f"out.append({v}.text)")
        return v

    def loop(self, pad: str, indent: int, outputs: list[str], depth: int) -> None:
        rounds, stage, v = self.draw(st.integers(1, 3)), self.draw(st.integers(0, 5)), self.var()
        self.emit(pad, f"for _ in range({rounds}):")
        self.emit(pad, f"    {v} = s{stage}({self.text_of(outputs)})")
        self.emit(pad, f"    out.append({v}.text)")
        self.emit(pad, f"    if {v}.flag:")
        self.emit(pad, "        break")

    def if_flag(self, pad: str, indent: int, outputs: list[str], depth: int) -> None:
        self.branches(pad, indent, outputs, depth,
                      [f"if {self.draw(st.sampled_from(outputs))}.flag:", "else:"])

    def if_kind(self, pad: str, indent: int, outputs: list[str], depth: int) -> None:
        on = self.draw(st.sampled_from(outputs))
        heads = [f'if {on}.kind == "a":', f'elif {on}.kind == "b":', "else:"]
        self.branches(pad, indent, outputs, depth, heads[:self.draw(st.integers(1, 3))])

    def if_none(self, pad: str, indent: int, outputs: list[str], depth: int) -> None:
        on = self.draw(st.sampled_from(outputs))
        self.branches(pad, indent, outputs, depth, [f"if orla.is_none({on}.maybe):", "else:"])

    def branches(self, pad: str, indent: int, outputs: list[str], depth: int,
                 heads: list[str]) -> None:
        for head in heads:
            self.emit(pad, head)
            self.block(indent + 4, list(outputs), depth + 1)


@st.composite
def workflow_sources(draw: st.DrawFn) -> str:
    writer = Writer(draw)
    writer.block(4, [], 0)
    body = "\n".join(writer.lines)
    return ("import orla_sdk as orla\n"
            "from property_workflows import TABLE, join, s0, s1, s2, s3, s4, s5\n\n\n"
            "@orla.workflow\n"
            "def generated(text: str) -> list[str]:\n"
            "    out: list[str] = []\n"
            f"{body}\n"
            "    return out\n")


def compile_or_reject(wf: Any) -> orla.Plan:
    """The plan, or the example rejected when it has more paths than a plan may."""
    try:
        return orla.compile(wf, backends=SIM, mapping={"m": "sim/qwen3-8b"})
    except orla.TraceError as exc:
        if "paths through its branches" not in str(exc):
            raise
        reject()


def load(source: str) -> Any:
    """Import ``source`` as a module from a file, so tracing can read its lines."""
    name = f"orla_generated_{next(_numbers)}"
    path = SOURCES / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.generated


async def run_all(plan: orla.Plan, texts: list[str]) -> list[Any]:
    async with orla.BackendPool(plan.backends) as pool:
        return [(await orla.arun(plan, pool=pool, text=t)).output for t in texts]


SIM = [orla.backends.simulator("sim", clock="virtual")]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workflow_sources())
def test_a_compiled_run_equals_the_plain_python_call(source: str) -> None:
    wf = load(source)
    plan = compile_or_reject(wf)
    expected = [wf(t) for t in TEXTS]
    assert asyncio.run(run_all(plan, TEXTS)) == expected, source
    again = orla.compile(wf, backends=SIM, mapping={"m": "sim/qwen3-8b"})
    assert again.to_json() == plan.to_json(), source
    assert orla.Plan.from_json(plan.to_json()).to_json() == plan.to_json(), source


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workflow_sources(), st.randoms(use_true_random=False))
def test_a_run_resumed_from_any_checkpoints_equals_the_plain_python_call(
        source: str, rng: random.Random) -> None:
    wf = load(source)
    plan = compile_or_reject(wf)
    store_path = SOURCES / f"runs-{next(_numbers)}.db"
    first = orla.run(plan, run_id="r", checkpoint=store_path, text=TEXTS[0])
    store = SQLiteCheckpoints(store_path)
    saved = sorted(store.stages("r"))
    lost = rng.sample(saved, rng.randint(0, len(saved)))  # as if killed before these
    for key in lost:
        store._write("DELETE FROM stages WHERE run_id = 'r' AND key = ?", key)
    resumed = orla.resume(plan, "r", checkpoint=store_path)
    assert resumed.output == first.output == wf(TEXTS[0]), source
    ran_again = [r for r in resumed.stages if r.status == "done" and not r.restored]
    assert len(ran_again) == len(lost), source
