"""Agent identity: the coordinate the agent layer keys everything by.

``AgentKey(workload, agent, run, step)``. Where the agent comes from, best first: declared
(``@stage(agent=...)``, a LangGraph node, an AutoGen agent's name, the proxy's
``X-Orla-Agent`` header or SGLang's ``agent_id`` field); else the stage name; else a
fingerprint of the prompt's leading text past what every prompt shares (the chat
template, a common preamble), so that unmodified clients still get identities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FINGERPRINT_CHARS = 512  # of the first message's text: an agent's system prompt, mostly


@dataclass(frozen=True)
class AgentKey:
    """Who makes a model call: ``agent`` of ``workload``, in ``run``, at its ``step``, for
    ``tenant`` (the proxy's API token it came with; "" in code)."""

    workload: str
    agent: str
    run: str = ""
    step: int = 0
    tenant: str = ""

    @property
    def known(self) -> bool:
        return bool(self.agent)

    def at_step(self, step: int) -> AgentKey:
        return AgentKey(self.workload, self.agent, self.run, step, self.tenant)


def fingerprint(messages: Sequence[dict[str, Any]], *, skip_chars: int = 0,
                chars: int = FINGERPRINT_CHARS) -> str:
    """A stable name for the agent behind a prompt nobody labelled: a hash of the leading
    ``chars`` characters of its first message after ``skip_chars`` (the part every agent's
    prompt shares). Agents differ there by their system prompts; calls of one agent
    agree there however long their conversations grow."""
    if not messages:
        return ""
    first = messages[0]
    content = first.get("content") if isinstance(first, dict) else None
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content
                          if isinstance(part, dict))
    text = json.dumps([first.get("role") if isinstance(first, dict) else None,
                       str(content or "")[skip_chars:skip_chars + chars]])
    return "fp-" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
