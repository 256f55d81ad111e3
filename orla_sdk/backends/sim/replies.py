"""What the simulated model writes. Replies are deterministic under the seed; JSON-schema
requests get JSON of that schema, and a request that offers tools gets a call to one until
a tool result follows the last user message."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orla_sdk.backends.base import ChatRequest, ToolCall, token_limit
from orla_sdk.backends.sim.tokens import tokenize, tool_call_text

FILLER = ("the", "model", "agent", "plan", "step", "cache", "answer", "check", "result",
          "value", "data", "task", "order", "ticket", "policy", "note", "reply", "query")


@dataclass(frozen=True)
class Reply:
    """What the simulated model writes: text or one tool call, and its tokens."""

    content: str
    tool_calls: list[ToolCall]
    tokens: list[str]
    finish_reason: str


def plan_reply(request: ChatRequest, prompt_json: str, seed: int, median: int) -> Reply:
    """The reply to ``request``, whose prompt's tokens ``prompt_json`` holds as JSON."""
    rng = random.Random(reply_seed(seed, request, prompt_json))
    limit = token_limit(request)
    cap = max(1, limit) if limit else None
    call = _tool_call(request, rng)
    if call is not None:
        text = tool_call_text(call.name, call.arguments)
        tokens = tokenize(text)
    elif request.json_schema is not None:
        text = json.dumps(fake_json(request.json_schema, rng))
        tokens = tokenize(text)
    else:
        length = max(1, round(rng.lognormvariate(math.log(median), 0.6)))
        if cap is not None and request.params.get("ignore_eos"):  # vLLM's: exactly the cap
            length = cap
        tokens = filler_tokens(rng, length if cap is None else min(length, cap + 1))
        text = "".join(tokens)
    if cap is not None and len(tokens) > cap:
        tokens = tokens[:cap]
        return Reply("".join(tokens), [], tokens, "length")
    if call is not None:
        return Reply("", [call], tokens, "tool_calls")
    return Reply(text, [], tokens, "stop")


def stable_seed(*parts: Any) -> int:
    """A seed from JSON-able parts that is the same in every process (unlike ``hash``)."""
    return _seed_of(_json_text(parts))


def reply_seed(seed: int, request: ChatRequest, prompt_json: str) -> int:
    """``stable_seed(seed, the request's seed, its model, its prompt's tokens, its JSON
    schema)``, with the prompt's JSON given rather than encoded again."""
    head = _json_text([seed, request.params.get("seed"), request.model])
    schema = _schema_text(request.json_schema)
    return _seed_of(f"{head[:-1]}, {prompt_json}, {schema}]")


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# id of a schema -> (the schema, its JSON text): a structured stage sends the same schema
# object with every call (schemas are read-only once made)
_schema_texts: dict[int, tuple[Any, str]] = {}
SCHEMAS_KEPT = 256


def _schema_text(schema: dict[str, Any] | None) -> str:
    if schema is None:
        return "null"
    kept = _schema_texts.get(id(schema))
    if kept is not None and kept[0] is schema:
        return kept[1]
    if len(_schema_texts) >= SCHEMAS_KEPT:
        _schema_texts.clear()
    text = _json_text(schema)
    _schema_texts[id(schema)] = (schema, text)
    return text


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def filler(rng: random.Random, tokens: int) -> str:
    """Plain text of exactly ``tokens`` tokens: short words, a full stop now and then."""
    return "".join(filler_tokens(rng, tokens))


def filler_tokens(rng: random.Random, tokens: int) -> list[str]:
    """``filler``'s text as the tokenizer splits it, without running the tokenizer: every
    word is one token (at most 6 letters), with the space before it, but the first."""
    words = rng.choices(FILLER, k=tokens)
    for i in range(7, tokens, 8):
        words[i] = "."
    return [word if i == 0 or word == "." else " " + word for i, word in enumerate(words)]


def _tool_call(request: ChatRequest, rng: random.Random) -> ToolCall | None:
    """A call to the chosen tool (the first, unless ``tool_choice`` names one) until a tool
    result follows the last user message; then the model answers."""
    choice = request.params.get("tool_choice", "auto")
    if not request.tools or choice == "none" or _tool_answered(request.messages):
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    tool = next((t for t in request.tools if t["function"]["name"] == named), request.tools[0])
    schema = tool["function"].get("parameters") or {"type": "object"}
    return ToolCall(id=f"call_{rng.getrandbits(48):012x}", name=tool["function"]["name"],
                    arguments=json.dumps(fake_json(schema, rng)))


def _tool_answered(messages: list[dict[str, Any]]) -> bool:
    for message in reversed(messages):
        if message.get("role") in ("tool", "user"):
            return bool(message.get("role") == "tool")
    return False


def fake_json(schema: dict[str, Any], rng: random.Random,
              root: dict[str, Any] | None = None) -> Any:
    """A value that validates against ``schema`` (``$defs``/``$ref`` as pydantic emits them;
    ``pattern`` and ``multipleOf`` are not honoured)."""
    if isinstance(schema, bool):  # ``true`` accepts anything
        schema = {}
    root = root if root is not None else schema
    if "$ref" in schema:
        return fake_json(_resolve(schema["$ref"], root), rng, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return fake_json(rng.choice(options), rng, root)
    if "allOf" in schema:
        return fake_json({k: v for part in schema["allOf"] for k, v in part.items()}, rng, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _FAKERS[kind](schema, rng, root)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _fake_object(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    value = {name: fake_json(sub, rng, root) for name, sub in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties")
    if not value and isinstance(extra, dict):
        value["key"] = fake_json(extra, rng, root)
    return value


def _fake_array(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    if "prefixItems" in schema:
        return [fake_json(item, rng, root) for item in schema["prefixItems"]]
    count = max(schema.get("minItems", 0), min(rng.randint(1, 3), schema.get("maxItems", 3)))
    return [fake_json(schema.get("items", {}), rng, root) for _ in range(count)]


def _fake_string(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    formats = {"date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "time": "12:00:00",
               "email": "agent@example.com", "uri": "https://example.com/",
               "uuid": "00000000-0000-4000-8000-000000000000"}
    text = formats.get(schema.get("format", ""), "") or filler(rng, rng.randint(1, 6))
    text = text.ljust(schema.get("minLength", 0), "x")
    return text[:schema["maxLength"]] if "maxLength" in schema else text


def _fake_number(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    whole = schema.get("type") == "integer"
    step = 1 if whole else 0.01
    low = schema.get("minimum", schema.get("exclusiveMinimum", -step) + step)
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100 + step) - step)
    if whole:
        return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    return min(max(round(rng.uniform(low, high), 2), low), high)


def _fake_boolean(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    return rng.random() < 0.5


def _fake_null(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    return None


_FAKERS: dict[str, Callable[[dict[str, Any], random.Random, dict[str, Any]], Any]] = {
    "object": _fake_object, "array": _fake_array, "string": _fake_string,
    "integer": _fake_number, "number": _fake_number, "boolean": _fake_boolean,
    "null": _fake_null,
}
