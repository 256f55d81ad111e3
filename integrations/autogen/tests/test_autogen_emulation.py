"""Tool calls emulated through JSON-schema output (engines that cannot call tools) are
bounded as orla's runtime bounds them: strings kept within the token limit, a reply cut
off by the limit read as a shorter reply or taken as the agent's text, an unreadable
reply asked for again a bounded number of times. None of them stops the team."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import TextMessage, ToolCallSummaryMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core.tools import FunctionTool
from autogen_scripted import ask, client_of, serve_on_sims, served_run, sims
from orla_autogen import autogen_client

from orla_sdk.backends import ChatRequest, ChatResult


def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


def clerk_team(**create_args: Any) -> RoundRobinGroupChat:
    clerk = AssistantAgent("clerk", model_client=autogen_client(**create_args),
                           tools=[lookup], description="looks orders up")
    return RoundRobinGroupChat([clerk], termination_condition=MaxMessageTermination(2))


def replies(*contents: tuple[str, str]) -> Any:
    """A script: the emulated calls' replies in turn (text and finish reason)."""
    queue = list(contents)

    def script(request: ChatRequest, result: ChatResult) -> ChatResult:
        if request.json_schema is None or not queue:
            return result
        content, finish = queue.pop(0)
        return replace(result, content=content, finish_reason=finish)

    return script


@pytest.mark.parametrize(("cut", "kind", "text"), [
    ('{"tool": "loo', TextMessage, '{"tool": "loo'),  # cut inside the tool's name
    ('{"ans', TextMessage, '{"ans'),  # cut inside the first key
    ('{"answer": "Order 7 has sh', TextMessage, "Order 7 has sh"),
    ('{"tool": "lookup", "arguments": {"order_id": "7', ToolCallSummaryMessage,
     "order 7: shipped"),
])
def test_a_reply_cut_by_the_token_limit_never_stops_the_team(cut: str, kind: type,
                                                              text: str) -> None:
    engines, team = sims(), clerk_team(max_tokens=12)
    engines["light"].script = replies((cut, "length"))
    served = serve_on_sims(team, engines, tool_calling=False)
    result = served_run(served, lambda: served.run(task="Where is order 7?"))

    answer = result.messages[-1]
    assert isinstance(answer, kind) and answer.source == "clerk"
    assert answer.to_text() == text
    assert len(engines["light"].requests) == 1  # a cut reply is not asked for again


def test_emulated_strings_are_bounded_by_the_token_limit() -> None:
    engines, team = sims(), clerk_team(max_tokens=20)
    served = serve_on_sims(team, engines, tool_calling=False)
    served_run(served, lambda: served.run(task="Where is order 7?"))

    schema = engines["light"].requests[0].json_schema
    assert schema is not None
    call, answer = schema["anyOf"]
    assert answer["properties"]["answer"] == {"type": "string", "maxLength": 40}
    order_id = call["properties"]["arguments"]["properties"]["order_id"]
    assert order_id["type"] == "string" and order_id["maxLength"] == 10


def test_an_unreadable_reply_is_asked_for_again_within_a_bound() -> None:
    engines, team = sims(), clerk_team()
    engines["light"].script = replies(("Sure! The order", "stop"), ('{"answer": "Fine."}', "stop"),
                                      ("no JSON", "stop"), ("still none", "stop"),
                                      ("nor here", "stop"))
    served = serve_on_sims(team, engines, tool_calling=False)
    tool = FunctionTool(lookup, description="Look an order up.")
    client = client_of(team, "clerk")

    async def twice() -> tuple[Any, Any]:
        first = await client.create(ask("Where is order 7?"), tools=[tool])
        return first, await client.create(ask("And order 8?"), tools=[tool])

    first, second = served_run(served, twice)
    assert first.content == "Fine."  # asked once more, with what was wrong
    retry = engines["light"].requests[1].messages
    assert retry[-2] == {"role": "assistant", "content": "Sure! The order"}
    assert retry[-1]["role"] == "user" and "not valid" in retry[-1]["content"]
    # never readable: asked twice more, then the last reply is the agent's text
    assert second.content == "nor here" and len(engines["light"].requests) == 5
    assert first.usage.prompt_tokens == sum(
        c.prompt_tokens for c in served.report.rows()[0].record.calls)
