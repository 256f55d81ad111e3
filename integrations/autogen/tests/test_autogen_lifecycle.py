"""How a served team stops: a run cancelled (by its ``CancellationToken`` or by cancelling
the task that awaits it) cancels the model call in flight and settles at once, and the
team, reset as AgentChat asks after a cancellation, runs again; closing is best effort and
never hides the app's own error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken
from autogen_scripted import GatedSim, ScriptedSim, serve_on_sims, sims
from orla_autogen import ServedTeam, autogen_client

from orla_sdk.errors import EngineError

SETTLE_S = 5.0  # a run settled within this did not wait for its gated call


def pair_team() -> RoundRobinGroupChat:
    return RoundRobinGroupChat(
        [AssistantAgent(n, model_client=autogen_client(max_tokens=16)) for n in ("a", "b")],
        termination_condition=MaxMessageTermination(3))


def gated() -> tuple[GatedSim, dict[str, ScriptedSim]]:
    engines = sims()
    gate = GatedSim("smollm2-135m", "light", engines["light"].clock)
    return gate, {**engines, "light": gate}


async def streamed(served: ServedTeam, token: CancellationToken) -> TaskResult:
    async for event in served.run_stream(task="Plan a small CLI tool.",
                                         cancellation_token=token):
        if isinstance(event, TaskResult):
            return event
    raise AssertionError("run_stream ended without a TaskResult")


async def ran(served: ServedTeam, token: CancellationToken) -> TaskResult:
    return await served.run(task="Plan a small CLI tool.", cancellation_token=token)


async def by_token(task: asyncio.Task[Any], token: CancellationToken) -> None:
    token.cancel()


async def by_task(task: asyncio.Task[Any], token: CancellationToken) -> None:
    task.cancel()


@pytest.mark.parametrize("cancel", [by_token, by_task])
@pytest.mark.parametrize("method", [ran, streamed])
def test_a_cancelled_run_cancels_its_call_settles_and_the_team_runs_again(
        method: Callable[[ServedTeam, CancellationToken], Awaitable[TaskResult]],
        cancel: Callable[[asyncio.Task[Any], CancellationToken], Awaitable[None]]) -> None:
    gate, engines = gated()
    served = serve_on_sims(pair_team(), engines)

    async def go() -> TaskResult:
        async with served:
            token = CancellationToken()
            task = asyncio.ensure_future(method(served, token))
            await asyncio.to_thread(gate.waiting.wait, SETTLE_S)
            started = time.monotonic()
            await cancel(task, token)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, SETTLE_S)
            assert time.monotonic() - started < SETTLE_S
            gate.opened.set()
            await served.reset()  # AgentChat's advice after a cancellation
            return await asyncio.wait_for(method(served, CancellationToken()), SETTLE_S)

    result = asyncio.run(go())
    assert gate.cancelled == 1  # the call in flight was cancelled on its engine
    runs = list(dict.fromkeys(row.labels["run"] for row in served.report.rows()))
    assert len(runs) == 2
    assert {entry["run"] for entry in served.cache_log} == set(runs)  # both settled
    assert [m.source for m in result.messages] == ["user", "a", "b"]  # a whole run
    assert result.stop_reason is not None and "Maximum number of messages" in result.stop_reason


def test_leaving_the_stream_early_stops_the_team_at_once() -> None:
    gate, engines = gated()
    served = serve_on_sims(pair_team(), engines)

    async def go() -> tuple[Any, float]:
        async with served:
            stream = served.run_stream(task="Plan a small CLI tool.")
            first = await anext(stream)  # the task's message
            await asyncio.to_thread(gate.waiting.wait, SETTLE_S)
            started = time.monotonic()
            await asyncio.wait_for(stream.aclose(), SETTLE_S)
            return first, time.monotonic() - started

    first, took = asyncio.run(go())
    assert first.source == "user" and took < SETTLE_S
    assert gate.cancelled == 1


def serve_on_a_dying_engine() -> ServedTeam:
    """A served team whose engine dies as the session closes: closing raises once the
    engines and the loop are stopped."""
    served = serve_on_sims(pair_team(), sims())
    close = served.session.close

    def close_and_fail() -> None:
        close()
        raise EngineError("the engine died")

    served.session.close = close_and_fail  # type: ignore[method-assign]
    return served


def loop_threads(served: ServedTeam) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"orla-serve-{served.plan.name}"]


def test_the_apps_error_is_not_masked_by_a_failing_close(
        caplog: pytest.LogCaptureFixture) -> None:
    served = serve_on_a_dying_engine()

    async def app() -> None:
        async with served:
            await served.run(task="Plan a small CLI tool.")
            assert loop_threads(served)
            raise ValueError("the app's own error")

    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="app's own error"):
        asyncio.run(app())
    assert "the engine died" in caplog.text  # logged, not raised
    assert not loop_threads(served)


@pytest.mark.parametrize("closing", ["close", "aclose"])
def test_close_is_best_effort(closing: str, caplog: pytest.LogCaptureFixture) -> None:
    served = serve_on_a_dying_engine()
    asyncio.run(served.run(task="Plan a small CLI tool."))

    with caplog.at_level(logging.WARNING):
        if closing == "close":
            served.close()
        else:
            asyncio.run(served.aclose())
    assert "the engine died" in caplog.text
    assert not loop_threads(served)


def test_a_run_that_fails_to_settle_keeps_the_teams_own_outcome(
        caplog: pytest.LogCaptureFixture) -> None:
    served = serve_on_sims(pair_team(), sims())

    async def dead(run_id: str, outcome: str) -> list[Any]:
        raise EngineError("the engine died")

    served.session.settle = dead  # type: ignore[method-assign]

    async def runs() -> TaskResult:
        async with served:
            with pytest.raises(ValueError, match="Task list cannot be empty"):
                await served.run(task=[])  # the team's own error, then a failed settle
            return await served.run(task="Plan a small CLI tool.")

    with caplog.at_level(logging.WARNING):
        result = asyncio.run(runs())
    assert len(result.messages) == 3
    settles = [r for r in caplog.records if r.name == "orla_autogen"]
    assert len(settles) == 2 and all("the engine died" in r.getMessage() for r in settles)


def test_a_stream_cancelled_twice_still_settles_then_ends_cancelled() -> None:
    """A cancel scope cancels at every await: the team's step is waited for through the
    second cancellation, then the caller's cancellation goes on."""
    from autogen_core import CancellationToken
    from orla_autogen.stopping import stream_settled

    settled: list[str] = []

    async def team_stream() -> Any:
        yield "task"
        try:
            await asyncio.sleep(10)  # a model call in flight
        finally:
            await asyncio.sleep(0.2)  # the team settling after the cancellation
            settled.append("settled")
        yield "never"

    async def scenario() -> BaseException | None:
        token = CancellationToken()
        events = stream_settled(team_stream(), token)

        async def consume() -> None:
            async for _ in events:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except BaseException as exc:
            return exc
        return None

    ended = asyncio.run(scenario())
    assert isinstance(ended, asyncio.CancelledError) and settled == ["settled"]
