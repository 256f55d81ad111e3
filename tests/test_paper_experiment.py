"""The paper experiments' parts: data, labelers, the output-length model, the shared GPU,
and a small stage-mapping run end to end."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from benchmarks.paper.data import Instance, load_instances
from benchmarks.paper.labelers import LABELERS, oracle, rate_matched, smollm2
from benchmarks.paper.mapping_report import paper_table, results_table, summary
from benchmarks.paper.outputs import OutputModel
from benchmarks.paper.prompts import main_messages
from benchmarks.paper.stage_mapping import Settings, Setup, run
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.profiles import (
    QWEN3_8B,
    RTX_PRO_6000_MAXQ,
    get_profile,
    memory_share_profile,
)
from orla_sdk.backends.sim.shared_gpu import SharedGpu, SharedGpuEngine
from orla_sdk.backends.sim.tokens import render_prompt


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return load_instances()


@pytest.fixture(scope="module")
def sample(instances: list[Instance]) -> list[Instance]:
    return sorted(random.Random(1).sample(instances, 120), key=lambda i: i.instance_id)


def test_the_in_repository_data_is_complete(instances: list[Instance]) -> None:
    assert len(instances) == 2294
    assert sum(i.in_lite for i in instances) == 300
    assert all(i.files >= 1 and i.prompt_tokens > i.problem_tokens for i in instances)


def test_the_random_router_takes_exactly_the_papers_share(instances: list[Instance]) -> None:
    labels = rate_matched(instances)
    assert sum(labels.values()) == 956
    assert labels == rate_matched(instances)  # seeded


def test_the_oracle_calls_light_only_single_file_small_fixes(instances: list[Instance]) -> None:
    labels = oracle(instances)
    light = [i for i in instances if labels[i.instance_id]]
    assert 0 < len(light) < len(instances)
    assert all(i.files == 1 and i.lines_changed <= 10 for i in light)


def test_smollm2_answers_cut_short_still_count_and_empty_ones_are_heavy(
        instances: list[Instance], tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    ids = [i.instance_id for i in instances[:4]]
    path.write_text('instance_id,light,answer,prompt_tokens,seconds\n'
                    f'{ids[0]},1,"{{ ""prediction"": true }}",1,1\n'
                    f'{ids[1]},,"{{ ""prediction"": true",1,1\n'
                    f'{ids[2]},,"{{ ""prediction"":",1,1\n')
    labels = smollm2(instances[:4], path)
    assert labels == {ids[0]: True, ids[1]: True, ids[2]: False, ids[3]: False}


def test_outputs_respect_the_cap_and_only_the_heavy_model_thinks(
        instances: list[Instance]) -> None:
    model = OutputModel(heavy_thinking_median=4096)
    heavy = [model.tokens(i, "heavy") for i in instances]
    assert max(heavy) == 4096
    assert all(model.tokens(i, "light") <= h for i, h in zip(instances, heavy, strict=True))
    no_thinking = OutputModel(heavy_thinking_median=0)
    assert all(no_thinking.tokens(i, "heavy") == no_thinking.tokens(i, "light")
               for i in instances[:50])


def test_prompts_have_the_measured_sizes(sample: list[Instance]) -> None:
    for instance in sample[:20]:
        assert len(render_prompt(list(main_messages(instance)))) == instance.prompt_tokens


def test_a_smaller_memory_share_holds_fewer_kv_tokens() -> None:
    small = memory_share_profile(QWEN3_8B, RTX_PRO_6000_MAXQ, 0.35)
    large = memory_share_profile(QWEN3_8B, RTX_PRO_6000_MAXQ, 0.6)
    assert 0 < small.capacity_tokens < large.capacity_tokens
    assert small.decode_base_s == large.decode_base_s  # the costs are the whole GPU's


def _request(words: int) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "word " * words}],
                       params={"max_tokens": 200, "ignore_eos": True})


async def _durations(together: bool) -> tuple[float, float]:
    gpu = SharedGpu()
    heavy = SharedGpuEngine(get_profile("qwen3-8b-60pct"), gpu=gpu, name="heavy")
    light = SharedGpuEngine(get_profile("qwen3-4b-35pct"), gpu=gpu, name="light")
    if together:
        first, second = await asyncio.gather(heavy.chat(_request(500)),
                                             light.chat(_request(500)))
    else:
        first = await heavy.chat(_request(500))
        second = await light.chat(_request(500))
    return first.duration_s, second.duration_s


def test_two_engines_on_one_gpu_slow_each_other() -> None:
    heavy_alone, light_alone = asyncio.run(_durations(together=False))
    heavy_shared, light_shared = asyncio.run(_durations(together=True))
    assert heavy_shared > 1.3 * heavy_alone
    assert light_shared > 1.3 * light_alone
    # taking turns, the pair does the work of both, no more and no less
    assert max(heavy_shared, light_shared) == pytest.approx(heavy_alone + light_alone, rel=0.05)


def test_a_small_run_maps_faster_and_cheaper_than_the_baseline(sample: list[Instance]) -> None:
    labels = {name: labeler(sample) for name, labeler in LABELERS.items() if name != "smollm2"}
    settings = Settings(concurrency=64)
    base = run(Setup("baseline"), sample, labels["random"], settings=settings)
    mapped = run(Setup("one-bit", mapper="one-bit"), sample, labels["random"],
                 settings=settings)
    threshold = run(Setup("threshold", mapper="threshold"), sample, labels["random"],
                    settings=settings)
    assert mapped.light_count() == sum(labels["random"].values())
    assert mapped.routing_s > 0 and threshold.routing_s == 0
    assert mapped.wall_s < base.wall_s and mapped.cost < base.cost
    assert all(s.backend == "heavy" for s in base.done())
    rows = [summary(r) for r in (base, mapped, threshold)]
    table = results_table(rows)
    assert len(table) == 2 + 3 and all(r["name"] in "\n".join(table) for r in rows)
    assert len(paper_table(rows[0], rows[1], rows[2])) == 6


def test_requests_over_the_context_are_refused(instances: list[Instance]) -> None:
    longest = max(instances, key=lambda i: i.prompt_tokens)
    result = run(Setup("baseline"), [longest, instances[0]], {}, settings=Settings())
    refused = [s for s in result.served if s.backend is None]
    assert [s.instance_id for s in refused] == [longest.instance_id]
