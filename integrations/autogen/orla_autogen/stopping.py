"""How a served team stops: a run cancelled from outside, and the session closed.

- AgentChat stops a run whose ``CancellationToken`` is cancelled: the token reaches the
  model call in flight, which orla then cancels on its engine. A run whose task is
  cancelled, or whose stream is left early, gets no such signal: the team waits for its
  agents to go idle, that is for the call in flight and every turn after it. So each
  served run gets a token of its own, cancelled with the caller's token, with the
  caller's task and when the caller leaves the stream, and the team settles before the
  cancellation goes on.
- AgentChat's manager keeps a speaker whose turn was cancelled as still speaking (even
  through ``reset()``), and then stops the team's next run after its first turn: such
  speakers are forgotten once a run's token is cancelled.
- Closing is best effort: a failure (an engine that died) is logged, never raised, so it
  cannot hide the error an app is raising as it leaves ``async with served``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from autogen_agentchat.teams import BaseGroupChat
from autogen_core import Agent, AgentId, CancellationToken

from orla_sdk.serving import ServingSession

T = TypeVar("T")

log = logging.getLogger("orla_autogen")


def run_token(caller: CancellationToken | None) -> CancellationToken:
    """The token a served run hands the team: cancelled with the caller's."""
    token = CancellationToken()
    if caller is not None:
        caller.add_callback(token.cancel)
    return token


async def stream_settled(events: AsyncGenerator[T, None],
                         token: CancellationToken) -> AsyncGenerator[T, None]:
    """The team's stream, each step ``settled``. A caller that stops early, or is
    cancelled between steps, cancels the run's token before the stream is closed, so that
    the team settles at once rather than once its agents go idle."""
    try:
        while (event := await settled(_next(events), token)) is not None:
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        token.cancel()
        raise
    finally:
        await _closed(events)


async def _closed(events: AsyncGenerator[T, None]) -> None:
    """Close the team's stream. Closed early, the team raises the cancellation of its
    model call in flight, which is not the caller's: the caller's own goes on."""
    try:
        await events.aclose()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def _next(events: AsyncGenerator[T, None]) -> T | None:
    """The stream's next item; None once it ends."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


async def settled(step: Awaitable[T], token: CancellationToken) -> T:
    """A step of the team's run, awaited in a task of its own. If the caller is cancelled
    meanwhile, the run's token is cancelled and the team settles before the caller's
    cancellation goes on."""
    work = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if not work.done():
            token.cancel()
            await _until_done(work)
        _log_failure(work)
        raise


async def _until_done(work: asyncio.Future[T]) -> None:
    """Wait for ``work`` to end, through further cancellations of the caller (a cancel
    scope repeats its cancellation at every await): the team must settle first."""
    while not work.done():
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:
            continue


def _log_failure(work: asyncio.Future[T]) -> None:
    if work.done() and not work.cancelled() and (error := work.exception()) is not None:
        log.warning("a cancelled team run failed as it stopped (%s: %s)",
                    type(error).__name__, error)


async def forget_cancelled_turns(team: BaseGroupChat) -> None:
    """Clear the manager's speakers whose turn a cancellation cut short."""
    # the manager's agent id and its _active_speakers are not exposed by AgentChat
    manager_id = AgentId(team._group_chat_manager_topic_type, team._team_id)
    try:
        manager = await team._runtime.try_get_underlying_agent_instance(
            manager_id, Agent)  # type: ignore[type-abstract]  # AutoGen's own default
    except LookupError:  # the team never started: nobody spoke
        return
    speaking = getattr(manager, "_active_speakers", None)
    if isinstance(speaking, list):
        speaking.clear()


def close_quietly(session: ServingSession, team: str) -> None:
    """Close the session (its runs, engines and loop); a failure is logged."""
    try:
        session.close()
    except Exception as exc:
        log.warning("closing served team %r did not go cleanly (%s: %s); its engines and "
                    "loop were stopped as far as they could be", team, type(exc).__name__, exc)
