"""Run-time stage mappers: configuration in the plan, decisions from their inputs."""

from __future__ import annotations

import asyncio

import pytest

import orla_sdk as orla
from orla_sdk.mapping import Ask, normalize_mapping, parse_bit
from orla_sdk.refs import load_ref


def count_questions(prompt: str) -> float:
    return float(prompt.count("?"))


def answering(reply: str):  # type: ignore[no-untyped-def]
    asked: list[tuple[str, str]] = []

    async def ask(name: str, prompt: str) -> str:
        asked.append((name, prompt))
        return reply

    return ask, asked


@pytest.mark.parametrize(("reply", "chosen"), [
    ("simple", "light"), ("Simple.", "light"), ("0", "light"),
    ("complex", "heavy"), ("1", "heavy"), ("I cannot tell", "heavy"),
])
def test_one_bit_mapper_asks_the_judge(reply: str, chosen: str) -> None:
    ask, asked = answering(reply)
    mapper = orla.OneBitStageMapper(judge="light", simple="light", complex="heavy")
    assert asyncio.run(mapper.choose("Reset my password", ask)) == chosen
    assert asked[0][0] == "light" and asked[0][1].endswith("Reset my password")


def test_threshold_mapper_scores_the_prompt() -> None:
    ask, asked = answering("unused")
    mapper = orla.ThresholdStageMapper(threshold=2, score=count_questions)
    assert asyncio.run(mapper.choose("why? how?", ask)) == "heavy"
    assert asyncio.run(mapper.choose("why?", ask)) == "light"
    default = orla.ThresholdStageMapper(threshold=3)
    assert asyncio.run(default.choose("one two three", ask)) == "heavy"
    assert asked == []


def test_a_mapper_is_rebuilt_from_its_plan_spec() -> None:
    spec = orla.ThresholdStageMapper(threshold=2, score=count_questions).to_spec()
    again = load_ref(spec.ref).model_validate(spec.config)
    ask, _ = answering("")
    assert asyncio.run(again.choose("a? b?", ask)) == "heavy"
    assert spec.candidates == ["light", "heavy"]


class Keyword(orla.StageMapper):
    kind = "keyword"
    word: str
    hit: str = "heavy"
    miss: str = "light"

    def candidates(self) -> list[str]:
        return [self.miss, self.hit]

    async def choose(self, prompt: str, ask: Ask) -> str:
        return self.hit if self.word in prompt else self.miss


def test_custom_mappers_subclass_stage_mapper() -> None:
    spec = Keyword(word="refund").to_spec()
    assert spec.name == "keyword" and spec.config == {"word": "refund", "hit": "heavy",
                                                      "miss": "light"}
    ask, _ = answering("")
    assert asyncio.run(Keyword(word="refund").choose("a refund please", ask)) == "heavy"


def test_parse_bit() -> None:
    assert parse_bit("The answer is: complex") == 1
    assert parse_bit("simplest") is None


def test_mapping_values_are_checked() -> None:
    mapping = normalize_mapping({"a": "be/org/model-7b", "b": orla.Target(backend="x", model="y")})
    assert mapping["a"] == orla.Target(backend="be", model="org/model-7b")
    with pytest.raises(orla.OrlaError, match=r"give an orla\.Target"):
        normalize_mapping({"c": 42})
