"""Tool calls emulated through JSON-schema output, for engines that cannot call tools
natively, bounded as orla's runtime bounds its own (``orla_sdk.runtime.generate``).

- The reply is constrained to the runtime's emulation schema
  (``orla_sdk.runtime.emulated_tools_schema``): a tool call or the answer. Under a token
  limit its strings are bounded too, the answer to two characters a token and each
  string argument of a tool to half the limit (at least 8), so that a small model cannot
  ramble past the limit inside the JSON.
- A reply that the limit cut off is closed (``close_cut_json``, in the runtime's
  ``read_reply``) and read as a shorter reply. One that still reads as neither a call of
  an offered tool nor an answer (cut inside its first key or a tool's name) becomes the
  agent's text answer, as a cut reply is when tools are called natively.
- A reply that was not cut and is still not the JSON asked for (an engine that does not
  enforce schemas strictly) is asked for again, saying what was wrong, at most
  ``MAX_RETRIES`` times; the last one then becomes the agent's text answer. No emulated
  reply stops the team.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from autogen_core import FunctionCall
from autogen_core.models import CreateResult, RequestUsage

from orla_autogen.messages import Call, call_id, call_params, chat_messages, finish_reason
from orla_sdk.backends import ChatRequest, ChatResult, params_token_limit
from orla_sdk.ir import Target
from orla_sdk.runtime import StageContext, call_model, emulated_tools_schema, read_reply

MAX_RETRIES = 2


# ---- the request ----------------------------------------------------------------------
def emulated_request(call: Call, target: Target, priority: int | None,
                     stream: bool) -> ChatRequest:
    """The engine's request: no tools, the reply constrained to the emulation schema,
    earlier tool rounds written as that schema has them. Its text does not reach the
    agent's stream (the reply is JSON), but the engine streams it where the agent streams,
    as it would bare."""
    params = call_params(call, target)
    return ChatRequest(model=target.model, messages=chat_messages(call.messages, False),
                       params=params, json_schema=emulated_schema(call, params),
                       schema_name=call.schema_name, priority=priority, stream=stream)


def emulated_schema(call: Call, params: Mapping[str, Any]) -> dict[str, Any]:
    """The reply's schema: a call of one of the offered tools, or the answer (unless a
    tool call is required), with strings bounded by the call's token limit."""
    tools = [(t["name"], dict(t.get("parameters") or {"type": "object"})) for t in call.offered]
    return emulated_tools_schema(tools, call.schema, not call.must_call,
                                 params_token_limit(params))


# ---- the call and its reply -----------------------------------------------------------
async def emulated_answer(ctx: StageContext, target: Target, call: Call,
                          request: ChatRequest) -> CreateResult:
    """The emulated round: the reply read back as tool calls or the answer, asked for
    again while it cannot be read (``MAX_RETRIES`` times at most), else taken as text."""
    live = ctx.run.pool[target.backend]
    results: list[ChatResult] = []
    while True:
        result = await call_model(ctx, live, target, request)
        results.append(result)
        try:
            return read_emulated(result, call, _usage(results))
        except ValueError as exc:
            if result.finish_reason == "length" or len(results) > MAX_RETRIES:
                return CreateResult(finish_reason=finish_reason(result.finish_reason),
                                    content=result.content, usage=_usage(results),
                                    cached=False)
            request = replace(request, messages=[
                *request.messages, {"role": "assistant", "content": result.content},
                {"role": "user", "content": f"That answer is not valid: {_short(exc)}. "
                                            "Answer again, as JSON that matches the schema."}])


def read_emulated(result: ChatResult, call: Call, usage: RequestUsage) -> CreateResult:
    """The JSON reply of an emulated round, read by the runtime's ``read_reply``: calls
    of offered tools, or the answer (as JSON for ``json_output``). ``ValueError`` where
    it is neither."""
    structured = call.schema is not None  # any JSON value, read back as itself
    tool_calls, answer = read_reply(result, object if structured else None,
                                    offer_tools=True, emulate=True)
    offered = {t["name"] for t in call.offered}
    unknown = sorted({c.name for c in tool_calls} - offered)
    if unknown:
        raise ValueError(f"expected a call of one of the tools {sorted(offered)}, "
                         f"not of {unknown}")
    if tool_calls:  # the runtime names every emulated call "emulated": AutoGen needs ids
        calls = [FunctionCall(id=call_id(), arguments=c.arguments, name=c.name)
                 for c in tool_calls]
        return CreateResult(finish_reason="function_calls", content=calls, usage=usage,
                            cached=False)
    content = json.dumps(answer) if structured else str(answer)
    return CreateResult(finish_reason=finish_reason(result.finish_reason), content=content,
                        usage=usage, cached=False)


def _usage(results: list[ChatResult]) -> RequestUsage:
    return RequestUsage(sum(r.prompt_tokens for r in results),
                        sum(r.completion_tokens for r in results))


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
