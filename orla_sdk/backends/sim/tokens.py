"""The simulator's tokenizer: a deterministic stand-in for a model's, and the chat
rendered as one token sequence in the ChatML layout Qwen3 and SmolLM2 use, tool calls
included (``docs/simulator.md``, "Tokens")."""

from __future__ import annotations

import functools
import json
import re
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any

# A special token, a word piece of up to 6 letters, up to 3 digits, or one other character;
# a single space sticks to the piece after it. Joining the tokens gives the text back.
TOKEN = re.compile(r"<\|\w+\|>| ?[^\W\d_]{1,6}| ?\d{1,3}| ?(?:[^\w\s]|_)|\s")
PARTS_KEPT = 4096  # tokenized message parts remembered: a conversation repeats its past


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def render_prompt(messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None = None) -> list[str]:
    """The chat as one token sequence, in the ChatML layout Qwen3 and SmolLM2 use."""
    return rendered(messages, tools)[0]


def rendered(messages: list[dict[str, Any]],
             tools: list[dict[str, Any]] | None = None) -> tuple[list[str], str]:
    """The chat's tokens, and their JSON text as ``json.dumps(tokens)`` writes it.

    Each message is tokenized on its own and remembered: every part starts with a special
    token after a newline, which no token spans, so the parts' tokens joined are the
    whole text's."""
    parts = [_tokenized(text) for text in _chat_parts(messages, tools)]
    tokens = list(chain.from_iterable(part for part, _ in parts))
    return tokens, "[" + ", ".join(text for _, text in parts if text) + "]"


def _chat_parts(messages: list[dict[str, Any]],
                tools: list[dict[str, Any]] | None) -> list[str]:
    parts = [f"<|im_start|>system\n# Tools\n{json.dumps(tools)}<|im_end|>\n"] if tools else []
    parts += [f"<|im_start|>{m.get('role', 'user')}\n{message_text(m)}<|im_end|>\n"
              for m in messages]
    return [*parts, "<|im_start|>assistant\n"]


@functools.lru_cache(maxsize=PARTS_KEPT)
def _tokenized(text: str) -> tuple[tuple[str, ...], str]:
    tokens = tuple(TOKEN.findall(text))
    # json.dumps(tokens) without its brackets, without the encoder's machinery per item
    return tokens, ", ".join(map(encode_basestring_ascii, tokens))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content)
    calls = [call.get("function", {}) for call in message.get("tool_calls") or []]
    return str(content) + "".join(tool_call_text(c.get("name", ""), c.get("arguments", "{}"))
                                  for c in calls)


def tool_call_text(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": {arguments}}}</tool_call>'
