"""Constructs that once compiled to a plan that ran the wrong thing: each now runs as
plain Python does, or is refused at compile time with the line and the fix."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

import orla_sdk as orla

SIM = [orla.backends.simulator("sim", clock="virtual")]
TICKETS = ["my invoice is wrong", "the app crashes on start"]


class Ticket(BaseModel):
    category: Literal["billing", "technical"]
    urgent: bool
    coupon: str | None


@orla.stage(model="m")
def classify(text: str) -> Ticket:
    technical = "app" in text
    return Ticket(category="technical" if technical else "billing", urgent=technical,
                  coupon=None if technical else "SAVE5")


@orla.stage(model="m")
def refund(t: Ticket) -> str:
    return f"refund ({t.category})"


@orla.stage(model="m")
def troubleshoot(t: Ticket) -> str:
    return f"troubleshoot ({t.category})"


@orla.stage(model="m")
def split(text: str) -> list[str]:
    return text.split()


@orla.stage(model="m")
def shout(word: str) -> str:
    return word.upper()


HANDLERS = {"billing": refund, "technical": troubleshoot}


def compile_and_run(wf: Any, texts: list[str]) -> list[Any]:
    plan = orla.compile(wf, backends=SIM, mapping={"m": "sim/qwen3-8b"})
    return [orla.run(plan, text=t).output for t in texts]


def test_a_dispatch_table_gets_one_node_per_stage_under_its_guard() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        t = classify(text)
        return HANDLERS[t.category](t)

    assert compile_and_run(wf, TICKETS) == [wf(t) for t in TICKETS]
    plan = orla.compile(wf)
    assert sorted(n.label for n in plan.stage_nodes()) == ["classify", "refund", "troubleshoot"]


def test_a_ternary_callee_gets_one_node_per_stage() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        t = classify(text)
        return (refund if t.category == "billing" else troubleshoot)(t)

    assert compile_and_run(wf, TICKETS) == ["refund (billing)", "troubleshoot (technical)"]


def test_a_value_tested_at_two_sites_on_different_paths_runs_as_python() -> None:
    @orla.workflow
    def wf(text: str) -> list[str]:
        t = classify(text)
        out = []
        if t.urgent:
            out.append(HANDLERS[t.category](t))
        if orla.is_none(t.coupon):
            out.append(troubleshoot(t))
        else:
            out.append(HANDLERS[t.category](t))
        return out

    assert compile_and_run(wf, TICKETS) == [wf(t) for t in TICKETS]


def test_is_none_is_a_branch_the_plan_tests() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        t = classify(text)
        return troubleshoot(t) if orla.is_none(t.coupon) else refund(t)

    assert compile_and_run(wf, TICKETS) == [wf(t) for t in TICKETS]
    assert orla.is_none(None) and not orla.is_none("x")


@pytest.mark.parametrize("test", ["t.coupon is None", "t.coupon is not None",
                                  "None is t", "text is None"])
def test_an_is_none_test_on_a_stage_output_is_refused(test: str) -> None:
    namespace = {"orla": orla, "classify": classify, "refund": refund}
    source = (f"def wf(text: str) -> str:\n    t = classify(text)\n"
              f"    if {test}:\n        return 'none'\n    return refund(t)\n")
    path = _write_module("is_none_workflow", source)
    exec(compile(source, str(path), "exec"), namespace)
    with pytest.raises(orla.TraceError, match=r"is_none_workflow.py:3: .*is compared with None "
                                              r"by `is`.*Fix: write `orla.is_none\("):
        orla.compile(orla.workflow(namespace["wf"]))  # type: ignore[arg-type]


def test_an_is_none_test_on_a_plain_local_is_fine() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        note = None
        if note is None:
            return refund(classify(text))
        return troubleshoot(classify(text))

    assert compile_and_run(wf, TICKETS) == [wf(t) for t in TICKETS]


def test_enumerate_over_a_list_output_is_refused() -> None:
    @orla.workflow
    def wf(text: str) -> list[str]:
        return [shout(f"{w}") for i, w in enumerate(split(text))]

    with pytest.raises(orla.TraceError, match=r"test_trace_correctness.py:\d+: .*enumerate.*"
                                              r"Fix: iterate over the list itself"):
        orla.compile(wf)


def test_a_stage_inside_try_except_is_refused_directly_and_through_a_helper() -> None:
    @orla.workflow
    def direct(text: str) -> str:
        t = classify(text)
        try:
            return refund(t)
        except ValueError:
            return troubleshoot(t)

    def helper(t: Ticket) -> str:
        return refund(t)

    @orla.workflow
    def through_helper(text: str) -> str:
        t = classify(text)
        try:
            answer = helper(t)
        except Exception:
            answer = "sorry"
        return answer

    for wf in (direct, through_helper):
        with pytest.raises(orla.TraceError, match=r"stage 'refund' is called inside `try:` "
                                                  r"with an `except` clause.*Fix: catch"):
            orla.compile(wf)


def test_try_finally_around_a_stage_is_fine() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        try:
            return refund(classify(text))
        finally:
            pass

    assert compile_and_run(wf, TICKETS) == [wf(t) for t in TICKETS]


@pytest.mark.parametrize("name", ["run_id", "pool", "checkpoint", "on_event"])
def test_an_input_named_like_a_run_keyword_is_refused(name: str) -> None:
    namespace: dict[str, object] = {"refund": refund, "classify": classify}
    exec(f"def wf({name}: str) -> str:\n    return refund(classify({name}))\n", namespace)
    with pytest.raises(orla.TraceError, match=f"input named '{name}'.*Fix: rename"):
        orla.compile(namespace["wf"])


def test_an_input_named_plan_is_an_ordinary_input() -> None:
    @orla.workflow
    def wf(plan: str) -> str:
        return shout(plan)

    compiled = orla.compile(wf, backends=SIM, mapping={"m": "sim/qwen3-8b"})
    assert orla.run(compiled, plan="go").output == "GO"


class Assistant:
    def __init__(self, tone: str) -> None:
        self.tone = tone

    @orla.stage(model="m")
    def reply(self, text: str) -> str:
        return f"{self.tone}: {text}"


def test_a_method_stage_runs_as_plain_python_and_is_refused_in_a_plan() -> None:
    assistant = Assistant("calm")

    @orla.workflow
    def wf(text: str) -> str:
        return assistant.reply(text)

    assert wf("hi") == "calm: hi"
    with pytest.raises(orla.TraceError, match=r"stage 'reply' is a method of Assistant.*"
                                              r"Fix: define the stage as a function"):
        orla.compile(wf)


def test_a_callable_object_cannot_be_a_stage() -> None:
    class Greeter:
        def __call__(self, text: str) -> str:
            return text

    with pytest.raises(orla.OrlaError, match="decorates functions, not Greeter objects"):
        orla.stage(model="m")(Greeter())  # type: ignore[arg-type]


def _write_module(name: str, source: str) -> Path:
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    return path


def test_is_none_forms_a_user_writes_are_refused_and_plain_ones_are_not() -> None:
    refused = {
        "walrus": "    if (a := classify(text)) is None:\n        return 'none'\n"
                  "    return refund(a)\n",
        "comprehension": "    t = classify(text)\n"
                         "    return [refund(x) for x in [t] if x is not None][0]\n",
        "helper": "    return pick(classify(text))\n",
    }
    helper = "def pick(t):\n    if t is None:\n        return 'none'\n    return refund(t)\n\n\n"
    for name, body in refused.items():
        source = f"{helper}def wf(text: str) -> str:\n{body}"
        path = _write_module(f"none_{name}", source)
        namespace: dict[str, Any] = {"classify": classify, "refund": refund}
        exec(compile(source, str(path), "exec"), namespace)
        with pytest.raises(orla.TraceError, match="compared with None by `is`"):
            orla.compile(namespace["wf"])

    @orla.workflow
    def plain(text: str) -> str:
        handler = HANDLERS.get("shipping")
        if handler is None:
            return refund(classify(text))
        return handler(classify(text))

    assert compile_and_run(plain, TICKETS) == [plain(t) for t in TICKETS]


def test_a_stage_inside_suppress_is_refused() -> None:
    import contextlib

    @orla.workflow
    def wf(text: str) -> str:
        answer = "sorry"
        with contextlib.suppress(ValueError):
            answer = refund(classify(text))
        return answer

    with pytest.raises(orla.TraceError, match=r"inside `try:`.*suppress"):
        orla.compile(wf)


def test_two_stage_declarations_of_one_function_are_refused() -> None:
    def answer(t: Ticket) -> str:
        return t.category

    light, heavy = orla.stage(model="light")(answer), orla.stage(model="heavy")(answer)
    table = {"billing": light, "technical": heavy}

    @orla.workflow
    def wf(text: str) -> str:
        t = classify(text)
        return table[t.category](t)

    with pytest.raises(orla.TraceError, match=r"wrapped by two @orla.stage declarations.*"
                                              r"'light' and 'heavy'"):
        orla.compile(wf)


class Registry:
    shout = shout  # a stage stored on a class, not a method


def test_a_stage_stored_on_a_class_is_called_as_it_is() -> None:
    registry = Registry()

    @orla.workflow
    def wf(text: str) -> str:
        return registry.shout(text)

    assert wf("hi") == "HI"
    assert compile_and_run(wf, ["hi"]) == ["HI"]
