"""The requests' text, made to the measured sizes: filler words of the simulator's
tokenizer (one word, one token), so a prompt rendered by the simulator has the token
count ``prompt_lengths.csv`` gives in Qwen3 tokens.

- main request: the fixed system prompt (94 tokens, as in Orla's example), then one user
  message: the issue (``problem_tokens``), then the files the gold patch touches (the
  rest). Requests share only the system prompt, as the real ones do.
- router request: the router's fixed instruction, then the same issue text; sized to
  ``router_prompt_tokens`` with the mapper's own instruction counted in.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from benchmarks.paper.data import Instance
from orla_sdk.backends.sim.replies import filler, stable_seed
from orla_sdk.backends.sim.tokens import render_prompt, tokenize

SYSTEM_TOKENS = 94
ROUTER_PREFIX_TOKENS = 120  # the released router's instruction, 558 characters


def text(what: str, tokens: int) -> str:
    """``tokens`` filler tokens, the same for the same ``what``."""
    return filler(random.Random(stable_seed(what)), max(tokens, 0))


@functools.cache
def _overhead(roles: tuple[str, ...]) -> int:
    return len(render_prompt([{"role": role, "content": ""} for role in roles]))


@functools.cache
def main_messages(instance: Instance) -> tuple[dict[str, Any], ...]:
    issue = min(instance.problem_tokens, instance.prompt_tokens)
    files = (instance.prompt_tokens - _overhead(("system", "user")) - SYSTEM_TOKENS
             - issue - 1)
    user = text(f"issue {instance.instance_id}", issue) + "\n" + text(
        f"files {instance.instance_id}", files)
    return ({"role": "system", "content": text("system prompt", SYSTEM_TOKENS)},
            {"role": "user", "content": user})


def router_text(instance: Instance, mapper_instruction: str) -> str:
    """The router's prompt as the mapper is given it: it prepends its own instruction."""
    own = len(tokenize(mapper_instruction)) + _overhead(("user",))
    issue = instance.router_prompt_tokens - own - ROUTER_PREFIX_TOKENS - 1
    return (text("router instruction", ROUTER_PREFIX_TOKENS) + "\n"
            + text(f"issue {instance.instance_id}", issue))
