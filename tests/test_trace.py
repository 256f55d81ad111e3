"""Tracing: stage calls become nodes, typed branches become guarded paths."""

from __future__ import annotations

import asyncio
import enum
from typing import Literal

import pytest
from pydantic import BaseModel

import orla_sdk as orla


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Review(BaseModel):
    verdict: Literal["accept", "revise", "reject"]
    mood: Mood
    urgent: bool
    topics: list[str]
    notes: str


@orla.stage(model="m")
def review(text: str) -> Review:
    return Review(verdict="accept", mood=Mood.HAPPY, urgent=False, topics=["a"], notes="ok")


@orla.stage(model="m")
def write(text: str) -> str:
    return f"wrote {text}"


@orla.stage(model="m")
def check(text: str) -> bool:
    return True


@orla.stage(model="m")
def merge(parts: list[str]) -> str:
    return "+".join(parts)


@orla.stage(model="m")
async def write_async(text: str) -> str:
    return f"async {text}"


@orla.stage(model="m")
def untyped(text: str):  # type: ignore[no-untyped-def]
    return text


def is_long(text: str) -> bool:
    return len(text) > 10


def size_class(text: str) -> str:
    return "long" if len(text) > 10 else "short"


def compile_(wf, **kwargs):  # type: ignore[no-untyped-def]
    return orla.compile(wf, **kwargs)


def alt(value: object, branch: str, choices: list[object]) -> dict[str, object]:
    return {"value": value, "when": [[{"branch": branch, "choices": choices}]]}


def guards(plan: orla.Plan, node_id: str) -> list[list[tuple[str, list[object]]]]:
    return [[(c.branch, c.choices) for c in g] for g in plan.node(node_id).guards]


# ---- stages outside workflows -------------------------------------------------------
def test_stage_outside_a_workflow_just_runs() -> None:
    assert write("x") == "wrote x"
    assert review("t").verdict == "accept"
    assert asyncio.run(write_async("y")) == "async y"
    assert write.__name__ == "write" and write.__doc__ is None


def test_stage_decorator_without_arguments() -> None:
    @orla.stage
    def plain(x: str) -> str:
        return x * 2

    assert plain("ab") == "abab"
    assert plain.model is None


def test_workflow_called_directly_runs_as_plain_python() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        return write(r.notes) if r.verdict == "accept" else "no"

    assert wf("hello") == "wrote ok"


def test_output_types_come_from_return_annotations() -> None:
    spec = review.spec()
    assert spec.output.kind == "model"
    assert spec.output.fields is not None
    assert spec.output.fields["verdict"].values == ["accept", "revise", "reject"]
    assert spec.output.fields["mood"].kind == "enum"
    assert spec.output.fields["topics"].kind == "list"
    assert check.spec().output.kind == "bool"
    assert untyped.spec().output.kind == "any"
    assert write_async.spec().is_async


# ---- data edges -----------------------------------------------------------------------
def test_data_edges_and_concurrency() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        a = write(r.notes)
        b = write(text)
        return merge([a, b])

    plan = compile_(wf)
    succ = plan.successors()
    assert plan.node("write").args == [{"$ref": "review", "path": ["notes"]}]
    assert plan.node("write_2").args == [{"$ref": "input:text"}]
    assert "write_2" not in succ["write"] and "write" not in succ["write_2"]
    assert plan.node("merge").args == [[{"$ref": "write"}, {"$ref": "write_2"}]]
    assert plan.paths == 1


def test_async_workflow_awaits_stages() -> None:
    @orla.workflow
    async def wf(text: str) -> str:
        first = await write_async(text)
        return await write_async(first)

    plan = compile_(wf)
    assert plan.node("write_async_2").args == [{"$ref": "write_async"}]


def test_async_workflow_awaiting_other_things_is_an_error() -> None:
    @orla.workflow
    async def wf(text: str) -> str:
        await asyncio.sleep(0)
        return await write_async(text)

    with pytest.raises(orla.TraceError, match="awaited something other than a stage"):
        compile_(wf)


def test_constants_are_encoded() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return write({"$weird": 1, "mood": Mood.SAD, "r": Review(
            verdict="reject", mood=Mood.SAD, urgent=True, topics=[], notes=""), "t": (1, 2)})

    (arg,) = compile_(wf).node("write").args
    inner = arg["$dict"]
    assert inner["mood"] == {"$enum": "test_trace:Mood", "value": "sad"}
    assert inner["r"]["$model"] == "test_trace:Review"
    assert inner["t"] == {"$tuple": [1, 2]}


# ---- branches ---------------------------------------------------------------------------
def test_bool_field_branch_records_both_paths() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        if r.urgent:
            return write("now")
        return write("later")

    plan = compile_(wf)
    assert plan.paths == 2
    branch = plan.node("branch:review.urgent")
    assert branch.kind == "branch" and branch.choices == [True, False]
    assert guards(plan, "write") == [[("branch:review.urgent", [True])]]
    assert guards(plan, "write_2") == [[("branch:review.urgent", [False])]]
    out = plan.node("output").args[0]
    assert out == {"$oneof": [alt({"$ref": "write"}, "branch:review.urgent", [True]),
                              alt({"$ref": "write_2"}, "branch:review.urgent", [False])]}


def test_literal_comparisons_enumerate_every_value() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        if r.verdict == "accept":
            return write("a")
        elif r.verdict == "revise":
            return write("b")
        return write("c")

    plan = compile_(wf)
    assert plan.paths == 3
    assert plan.node("branch:review.verdict").choices == ["accept", "revise", "reject"]
    assert guards(plan, "write_3") == [[("branch:review.verdict", ["reject"])]]


def test_match_on_enum_and_unguarded_join() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        match r.mood:
            case Mood.HAPPY:
                x = write("yay")
            case Mood.SAD:
                x = write("hm")
        return merge([x])

    plan = compile_(wf)
    assert plan.node("branch:review.mood").choices == ["happy", "sad"]
    assert plan.node("merge").guards == []
    assert plan.node("merge").args == [[{"$oneof": [
        alt({"$ref": "write"}, "branch:review.mood", ["happy"]),
        alt({"$ref": "write_2"}, "branch:review.mood", ["sad"])]}]]


def test_constants_chosen_by_a_branch_keep_their_guard() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        tone = "formal" if r.urgent else "casual"
        return write({"text": text, "tone": tone})

    plan = compile_(wf)
    assert plan.node("write").guards == []
    assert plan.node("write").args == [{"text": {"$ref": "input:text"}, "tone": {"$oneof": [
        alt("formal", "branch:review.urgent", [True]),
        alt("casual", "branch:review.urgent", [False])]}}]


def test_a_branch_that_picks_an_argument_is_a_dependency() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        tone = "formal" if review(text).urgent else "casual"
        return write(tone)

    plan = compile_(wf)
    assert plan.predecessors()["write"] == ["branch:review.urgent"]
    assert ("branch:review.urgent", "write", "picks argument") in {
        (e.src, e.dst, e.label) for e in plan.edges()}


def test_dollar_keys_in_constants_are_not_references() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return write({"$ref": "nothing", "t": text})

    plan = compile_(wf)
    assert plan.node("write").args == [{"$dict": {"$ref": "nothing", "t": {"$ref": "input:text"}}}]
    assert plan.predecessors()["write"] == ["input:text"]


def test_else_branch_of_literal_merges_choices() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        if r.verdict == "accept":
            return write("a")
        return write("other")

    plan = compile_(wf)
    assert guards(plan, "write_2") == [[("branch:review.verdict", ["revise", "reject"])]]


def test_nested_branch_needs_both_conditions() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        ok = check(text)
        if r.urgent:
            if ok:
                write("both")
        elif ok:
            pass
        return "done"

    plan = compile_(wf)
    # `ok` is tested at two sites, on different paths: a branch node for each
    assert guards(plan, "write") == [[("branch:check", [True])]]
    assert guards(plan, "branch:check") == [[("branch:review.urgent", [True])]]
    assert guards(plan, "branch:check_2") == [[("branch:review.urgent", [False])]]


def test_or_condition_gives_two_guards() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        if r.urgent or check(text):
            return write("x")
        return "no"

    plan = compile_(wf)
    assert guards(plan, "write") == [
        [("branch:review.urgent", [True])],
        [("branch:check", [True])],
    ]
    assert guards(plan, "check") == [[("branch:review.urgent", [False])]]


def test_bool_input_can_be_branched_on() -> None:
    @orla.workflow
    def wf(text: str, verbose: bool) -> str:
        return write(text) if verbose else "quiet"

    plan = compile_(wf)
    assert guards(plan, "write") == [[("branch:input:verbose", [True])]]


def test_cond_and_switch() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        draft = write(text)
        if orla.cond(is_long, draft):
            draft = write(draft)
        kind = orla.switch(size_class, draft, cases=["long", "short"])
        if kind == "long":
            return write("summary")
        return draft

    plan = compile_(wf)
    cond = plan.node("branch:is_long")
    assert cond.test is not None and cond.test.op == "call"
    assert cond.test.fn == "test_trace:is_long"
    assert cond.args == [{"$ref": "write"}]
    switch = plan.node("branch:size_class")
    assert switch.choices == ["long", "short"]
    assert switch.args == [{"$oneof": [alt({"$ref": "write_2"}, "branch:is_long", [True]),
                                       alt({"$ref": "write"}, "branch:is_long", [False])]}]
    assert guards(plan, "write_3") == [[("branch:size_class", ["long"])]]
    assert plan.paths == 4


def test_cond_and_switch_outside_a_workflow_call_the_function() -> None:
    assert orla.cond(is_long, "a very long text indeed") is True
    assert orla.switch(size_class, "tiny", cases=["long", "short"]) == "short"
    with pytest.raises(orla.OrlaError, match="not one of the cases"):
        orla.switch(size_class, "tiny", cases=["long"])


def test_path_cap_is_a_clear_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for _ in range(3):
            if check(text):
                write(text)
        return "x"

    assert compile_(wf).paths == 8
    with pytest.raises(orla.TraceError, match=r"more than 4 paths.*max_paths"):
        compile_(wf, max_paths=4)


def test_bounded_loop_with_break() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for _ in range(4):
            text = write(text)
            if check(text):
                break
        return text

    plan = compile_(wf)
    assert plan.paths == 5
    assert [n.id for n in plan.stage_nodes()].count("write_4") == 1
    assert guards(plan, "write_2") == [[("branch:check", [False])]]


def test_unbounded_while_is_rejected() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        while check(text):
            text = write(text)
        return text

    with pytest.raises(orla.TraceError, match=r"no bound.*range\(N\)"):
        compile_(wf, max_paths=10_000)


# ---- maps ---------------------------------------------------------------------------------
def test_iterating_a_list_output_is_a_map() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        parts = [write(topic) for topic in r.topics]
        return merge(parts)

    plan = compile_(wf)
    fan = plan.node("map:review.topics")
    assert fan.kind == "map" and fan.args == [{"$ref": "review", "path": ["topics"]}]
    assert plan.node("write").scope == "map:review.topics"
    assert plan.node("write").args == [{"$ref": "map:review.topics"}]
    assert plan.node("merge").args == [{"$gather": "write", "map": "map:review.topics"}]
    assert plan.node("merge").scope is None


def test_per_item_value_used_outside_its_loop_is_an_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for topic in review(text).topics:
            last = write(topic)
        return merge(last)

    with pytest.raises(orla.TraceError, match="outside the loop"):
        compile_(wf)


def test_break_out_of_a_map_is_an_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for topic in review(text).topics:
            write(topic)
            break
        return "x"

    with pytest.raises(orla.TraceError, match="left the loop"):
        compile_(wf)


# ---- misuse errors name the line and the fix ---------------------------------------------
@pytest.mark.parametrize(
    ("body", "what"),
    [
        (lambda r: write(f"about {r.notes}"), "turned into a string"),
        (lambda r: write(str(r.notes)), "turned into a string"),
        (lambda r: len(r.topics), "len()"),
        (lambda r: write("x") if r.notes else None, "tested with `if`"),
        (lambda r: r.missing, "attribute 'missing'"),
        (lambda r: r.notes > "a", "ordered"),
        (lambda r: [t for t in r.notes], "iterated over"),
        (lambda r: untyped(r.notes) == "x", "untyped value"),
    ],
)
def test_misusing_a_proxy_names_the_line_and_the_fix(body, what) -> None:  # type: ignore[no-untyped-def]
    @orla.workflow
    def wf(text: str) -> object:
        return body(review(text))

    with pytest.raises(orla.TraceError) as info:
        compile_(wf)
    message = str(info.value)
    assert what in message
    assert "test_trace.py:" in message and "Fix:" in message


def test_non_json_argument_is_an_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return write(object())  # type: ignore[arg-type]

    with pytest.raises(orla.TraceError, match="cannot carry"):
        compile_(wf)


def test_star_args_workflow_is_rejected() -> None:
    @orla.workflow
    def wf(*texts: str) -> str:
        return write(texts[0])

    with pytest.raises(orla.TraceError, match="named parameter"):
        compile_(wf)


def test_compile_inside_a_traced_workflow_is_rejected() -> None:
    @orla.workflow
    def inner(text: str) -> str:
        return write(text)

    @orla.workflow
    def outer(text: str) -> str:
        orla.compile(inner)
        return text

    with pytest.raises(orla.TraceError, match="another workflow"):
        compile_(outer)


# ---- determinism ----------------------------------------------------------------------------
def test_ids_come_from_call_sites_and_compiles_are_identical() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        a = write(text)
        b = write(a) if r.urgent else write(text)
        return merge([a, b])

    first, second = compile_(wf), compile_(wf)
    assert first.to_json() == second.to_json()
    assert [n.id for n in first.stage_nodes()] == ["review", "write", "write_2", "write_3",
                                                   "merge"]
    assert first.node("write_2").site == f"test_trace:{first.node('write_3').site.split(':')[1]}"  # type: ignore[union-attr]


def test_nondeterministic_workflow_is_rejected() -> None:
    runs = iter(range(100))

    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        if next(runs) == 1 and check(text):
            return "odd"
        return write("x") if r.urgent else "y"

    with pytest.raises(orla.TraceError, match="different route"):
        compile_(wf)


def test_comparing_with_a_value_the_type_never_takes_is_an_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        r = review(text)
        return write("x") if r.verdict == "acept" else "y"

    with pytest.raises(orla.TraceError, match=r"compared with 'acept'.*not a value its type"):
        compile_(wf)


def test_asyncio_gather_gets_a_precise_error() -> None:
    @orla.workflow
    async def wf(text: str) -> list[str]:
        return list(await asyncio.gather(write_async(text), write_async(text)))

    with pytest.raises(orla.TraceError, match=r"test_trace.py:\d+: `return list\(await asyncio"
                                              r".*passed to asyncio"):
        compile_(wf)

    @orla.workflow
    async def sleepy(text: str) -> str:
        await asyncio.sleep(1)
        return await write_async(text)

    with pytest.raises(orla.TraceError, match="awaited something other than a stage"):
        compile_(sleepy)


def test_input_defaults_are_recorded() -> None:
    @orla.workflow
    def wf(text: str, tone: str = "formal") -> str:
        return write(text)

    plan = compile_(wf)
    assert plan.node("input:tone").kwargs == {"default": "formal"}
    assert plan.node("input:text").kwargs == {}


def test_break_out_of_a_map_names_the_loop_line() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for topic in review(text).topics:
            return write(topic)
        return "x"

    with pytest.raises(orla.TraceError, match=r"^test_trace:\d+: .*loop over `review.topics`"):
        compile_(wf)


def test_branches_inside_a_loop_keep_one_node_per_round() -> None:
    @orla.workflow
    def wf(text: str) -> list[str]:
        out = []
        for i in range(3):
            out.append(write(f"{i}") if check(text) else merge([text]))
        return out

    plan = compile_(wf)
    assert plan.paths == 8
    writes = [n for n in plan.stage_nodes() if n.label == "write"]
    assert [n.args for n in writes] == [["0"], ["1"], ["2"]]
    assert [guards(plan, n.id) for n in writes] == [
        [[(f"branch:{c}", [True])]] for c in ("check", "check_2", "check_3")]


def test_an_exception_in_the_workflow_becomes_a_trace_error() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return write({"a": 1}["b"])

    with pytest.raises(orla.TraceError, match=r"test_trace.py:\d+: workflow 'wf' raised KeyError"):
        compile_(wf)
    with pytest.raises(orla.TraceError, match="plain function"):
        orla.compile(print)  # type: ignore[arg-type]
