"""The multi-agent trace converters of ``benchmarks/agent_traces.py``."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.agent_traces import (
    DATA,
    chatdev,
    chatdev_system_tokens,
    main,
    selector,
    summary,
    whowhen,
)
from orla_sdk.agents.trace import TraceCall, read_trace, sessions, write_trace

WHOWHEN = DATA / "whowhen.jsonl.gz"
CHATDEV = DATA / "chatdev_calls.csv"
NOT_LLM = {"human", "ComputerTerminal", "Computer_terminal"}


@pytest.fixture(scope="module")
def hand() -> list[TraceCall]:
    return whowhen(WHOWHEN, "hand-crafted", limit=3)


@pytest.fixture(scope="module")
def algo() -> list[TraceCall]:
    return whowhen(WHOWHEN, "algorithm-generated", limit=8)


@pytest.fixture(scope="module")
def chat() -> list[TraceCall]:
    return chatdev(CHATDEV, limit=6)


@pytest.fixture(scope="module")
def synthetic() -> list[TraceCall]:
    return selector(sessions=20, seed=3)


@pytest.fixture(params=["hand", "algo", "chat", "synthetic"])
def calls(request: pytest.FixtureRequest) -> list[TraceCall]:
    result: list[TraceCall] = request.getfixturevalue(request.param)
    return result


def test_calls_round_trip_through_a_trace_file(calls: list[TraceCall], tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    assert write_trace(path, calls) == len(calls)
    assert read_trace(path) == calls


def test_steps_increase_strictly_within_each_session(calls: list[TraceCall]) -> None:
    assert calls
    assert len({call.workload for call in calls}) == 1
    seen: dict[str, int] = {}
    for call in calls:  # converters emit a session's calls together, in step order
        assert call.step > seen.get(call.session, -1)
        seen[call.session] = call.step
    assert list(sessions(calls)) == list(dict.fromkeys(call.session for call in calls))


def test_limit_counts_sessions(hand: list[TraceCall], algo: list[TraceCall],
                               chat: list[TraceCall]) -> None:
    assert [len(sessions(c)) for c in (hand, algo, chat)] == [3, 8, 6]


def _source_logs(subset: str, limit: int) -> list[dict[str, Any]]:
    with gzip.open(WHOWHEN, "rt", encoding="utf-8") as lines:
        logs = [json.loads(line) for line in lines]
    return [log for log in logs if log["source"] == subset][:limit]


def test_whowhen_transcript_only_grows_and_ends_before_the_call(
        hand: list[TraceCall], algo: list[TraceCall]) -> None:
    for group in [*sessions(hand).values(), *sessions(algo).values()]:
        previous: list[dict[str, Any]] = []
        latest_by_agent: dict[str, list[dict[str, Any]]] = {}
        for call in group:
            assert call.messages is not None and call.messages[0]["role"] == "system"
            transcript = call.messages[1:]
            assert len(transcript) == call.step  # every message before this one
            assert len(transcript) > len(previous)
            mine = latest_by_agent.get(call.agent, [])
            assert transcript[:len(mine)] == mine and len(transcript) > len(mine)
            previous = latest_by_agent[call.agent] = transcript


def test_whowhen_prompt_contents_follow_the_log(algo: list[TraceCall]) -> None:
    log = _source_logs("algorithm-generated", 1)[0]
    history = log["history"]
    last = sessions(algo)[log["task_id"]][-1]
    assert last.messages is not None
    assert last.messages[0]["content"] == log["system_prompt"][last.agent]
    for source, message in zip(history, last.messages[1:], strict=False):
        own = source["speaker"] == last.agent
        assert message["role"] == ("assistant" if own else "user")
        expected = source["content"][:4_000]
        assert message["content"] == (expected if own else f"{source['speaker']}: {expected}")


def test_whowhen_skips_speakers_that_are_not_models(hand: list[TraceCall],
                                                    algo: list[TraceCall]) -> None:
    assert {call.agent for call in hand} <= {"Orchestrator", "WebSurfer", "FileSurfer",
                                              "Assistant"}
    assert "Orchestrator" in {call.agent for call in hand}
    assert not NOT_LLM & {call.agent for call in [*hand, *algo]}
    assert all(call.step > 0 for call in algo)  # the task message is not a call
    logs = {log["task_id"]: log["history"] for log in _source_logs("hand-crafted", 3)}
    for call in hand:
        label = logs[call.session][call.step]["speaker"]
        assert label in {"WebSurfer", "FileSurfer", "Assistant", "Orchestrator (thought)"}
        assert not logs[call.session][call.step]["content"].startswith("Next speaker")


def test_whowhen_caps_messages_and_counts_completions(tmp_path: Path) -> None:
    log = {"source": "hand-crafted", "task_id": "t", "history": repr([
        {"speaker": "human", "content": "question"},
        {"speaker": "Orchestrator (thought)", "content": "Initial plan: " + "x" * 50},
        {"speaker": "Orchestrator (-> WebSurfer)", "content": "search it"},
        {"speaker": "WebSurfer", "content": "page " * 40},
        {"speaker": "Orchestrator (termination condition)", "content": "No agent selected."},
    ])}  # `history` as a Python-literal string, as some copies of the logs store it
    path = tmp_path / "logs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(log) + "\n")
    calls = whowhen(path, "hand-crafted", max_chars=20)
    assert [(c.agent, c.step) for c in calls] == [("Orchestrator", 1), ("WebSurfer", 3)]
    websurfer = calls[1]
    assert websurfer.messages == [
        {"role": "system", "content": "You are WebSurfer, an agent of a Magentic-One team."},
        {"role": "user", "content": "human: question"},
        {"role": "user", "content": "Orchestrator (thought): Initial plan: xxxxxx"},
        {"role": "user", "content": "Orchestrator (-> WebSurfer): search it"}]
    assert websurfer.completion_tokens == 5  # "page page page page " (capped to 20 chars)


def test_chatdev_segments_sum_to_the_logged_prompt(chat: list[TraceCall]) -> None:
    with open(CHATDEV, encoding="utf-8", newline="") as rows:
        logged = {(row["run"], int(row["call_index"])): row for row in csv.DictReader(rows)}
    for call in chat:
        row = logged[(call.session, call.step)]
        assert call.segments is not None and len(call.segments) == 2
        assert sum(tokens for _, tokens in call.segments) == int(row["prompt_tokens"])
        assert call.completion_tokens == int(row["completion_tokens"])
        assert call.agent == row["speaker"]
        system_id, system = call.segments[0]
        assert system_id == f"chatdev/system/{row['speaker']}"
        assert system == min(chatdev_system_tokens(row["speaker"]), int(row["prompt_tokens"]))


def test_chatdev_times_and_histories(chat: list[TraceCall]) -> None:
    for group in sessions(chat).values():
        times = [call.time for call in group if call.time is not None]
        assert len(times) == len(group) and times[0] == 0.0 and times == sorted(times)
        lengths: dict[str, int] = {}
        for call in group:
            assert call.segments is not None
            history, length = call.segments[1]
            assert history.startswith(f"{call.session}/") and call.agent in history
            assert length >= lengths.get(history, 0)  # a history id never shrinks
            lengths[history] = length


def test_chatdev_starts_a_new_history_id_when_one_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    header = "run,call_index,timestamp,phase,assistant_role,user_role,speaker,prompt_tokens," \
             "completion_tokens\n"
    rows = ["r,0,2023-01-01 00:00:00,Coding,Programmer,CTO,Programmer,900,10",
            "r,1,2023-01-01 00:00:05,Coding,Programmer,CTO,Programmer,1200,10",
            "r,2,2023-01-01 00:00:09,Coding,Programmer,CTO,Programmer,800,10",
            "r,3,2023-01-01 00:01:00,Review,Reviewer,Programmer,Programmer,300,10"]
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    calls = chatdev(path)
    assert [c.segments[1][0] for c in calls if c.segments] == [
        "r/00-Coding/Programmer", "r/00-Coding/Programmer", "r/00-Coding/Programmer#2",
        "r/01-Review/Programmer"]
    assert [c.time for c in calls] == [0.0, 5.0, 9.0, 60.0]
    assert chatdev_system_tokens("Reviewer") == 250  # no known prompt: the default


def test_selector_is_deterministic_under_its_seed(synthetic: list[TraceCall]) -> None:
    assert selector(sessions=20, seed=3) == synthetic
    assert selector(sessions=20, seed=4) != synthetic


def test_selector_shape(synthetic: list[TraceCall]) -> None:
    for name, group in sessions(synthetic).items():
        assert 16 <= len(group) <= 48 and len(group) % 2 == 0
        assert [call.step for call in group] == list(range(len(group)))
        assert all(call.agent == "selector" for call in group[::2])
        assert all(call.agent != "selector" for call in group[1::2])
        thread = [call.segments[1] for call in group if call.segments]
        assert {segment_id for segment_id, _ in thread} == {f"{name}/thread"}
        assert thread[0][1] == thread[1][1]  # the selector and its pick see one thread
        for before, after in zip(group[1::2], group[2::2], strict=False):
            assert after.segments and before.segments and before.completion_tokens
            assert after.segments[1][1] == before.segments[1][1] + before.completion_tokens
    agents = {call.agent for call in synthetic}
    assert agents == {"selector", "planner", "researcher", "coder", "reviewer", "tester",
                      "writer"}
    for call in synthetic:
        assert call.segments and 300 <= call.segments[0][1] <= 900
        assert call.completion_tokens is not None and 1 <= call.completion_tokens <= 1_500


def test_selector_follows_its_skewed_handovers() -> None:
    handovers = [(before.agent, after.agent)
                 for group in sessions(selector(sessions=100, seed=0)).values()
                 for before, after in zip(group[1::2], group[3::2], strict=False)]
    assert all(before != after for before, after in handovers)  # no repeated speaker
    after_coder = [after for before, after in handovers if before == "coder"]
    assert after_coder.count("reviewer") / len(after_coder) > 0.5


def test_summary_on_hand_built_calls() -> None:
    def call(session: str, agent: str, step: int, **prompt: Any) -> TraceCall:
        return TraceCall(workload="w", session=session, agent=agent, step=step, **prompt)

    calls = [call("a", "x", 0, segments=[("s", 10), ("h", 20)]),
             call("a", "x", 1, segments=[("s", 10), ("h", 30)]),
             call("b", "y", 0, messages=[{"role": "user", "content": "hi"}]),
             call("a", "y", 2, segments=[("s", 40)])]
    # "hi" renders as `<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n`: 10 tokens
    # (`assistant` is two word pieces of at most 6 letters)
    assert summary(calls) == {"sessions": 2, "calls": 4, "agents": 2,
                              "mean_prompt_tokens": (30 + 40 + 10 + 40) / 4,
                              "same_agent_share": 1 / 4}
    assert summary([])["calls"] == 0


def test_main_writes_the_named_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chatdev", "--out", str(tmp_path)]) == 0
    assert len(read_trace(tmp_path / "chatdev.jsonl.gz")) == 1_375
    assert capsys.readouterr().out.startswith("chatdev: 56 sessions, 1375 calls")
    with pytest.raises(SystemExit):
        main(["nope", "--out", str(tmp_path)])
