"""The simulator's tokenizer: a deterministic stand-in for a model's, and the chat
rendered as one token sequence in the ChatML layout Qwen3 and SmolLM2 use, tool calls
included (``docs/simulator.md``, "Tokens")."""

from __future__ import annotations

import json
import re
from typing import Any

# A special token, a word piece of up to 6 letters, up to 3 digits, or one other character;
# a single space sticks to the piece after it. Joining the tokens gives the text back.
TOKEN = re.compile(r"<\|\w+\|>| ?[^\W\d_]{1,6}| ?\d{1,3}| ?(?:[^\w\s]|_)|\s")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def render_prompt(messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None = None) -> list[str]:
    """The chat as one token sequence, in the ChatML layout Qwen3 and SmolLM2 use."""
    parts = [f"<|im_start|>system\n# Tools\n{json.dumps(tools)}<|im_end|>\n"] if tools else []
    parts += [f"<|im_start|>{m.get('role', 'user')}\n{message_text(m)}<|im_end|>\n"
              for m in messages]
    return tokenize("".join(parts) + "<|im_start|>assistant\n")


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content)
    calls = [call.get("function", {}) for call in message.get("tool_calls") or []]
    return str(content) + "".join(tool_call_text(c.get("name", ""), c.get("arguments", "{}"))
                                  for c in calls)


def tool_call_text(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": {arguments}}}</tool_call>'
