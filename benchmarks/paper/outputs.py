"""How many tokens each model writes for a SWE-bench request: no run of the paper
published its outputs, so the experiment draws them from a documented model.

- **The answer** (a unified diff): the gold patch's length times a log-normal factor of
  median ``diff_scale`` and spread ``diff_sigma``. Both models get the same factor for an
  instance, so the two differ only where the model itself does.
- **Thinking**: Qwen3-8B served by vLLM thinks by default (its chat template's
  ``enable_thinking`` is true and the released example does not turn it off), so the
  heavy model writes a reasoning trace first, log-normal with median
  ``heavy_thinking_median`` tokens and spread ``thinking_sigma``. The light model, Qwen3-4B-
  Instruct-2507, has no thinking mode. ``heavy_thinking_median=0`` turns thinking off.
- Everything is cut at ``cap`` tokens (the requests' ``max_tokens``, 4,096).

Draws are seeded by the instance, so every configuration sees the same outputs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from benchmarks.paper.data import Instance
from orla_sdk.backends.sim.replies import stable_seed

Model = Literal["light", "heavy"]
ROUTER_ANSWER_TOKENS = 8  # '{"prediction": true}' in Qwen3 tokens


@dataclass(frozen=True)
class OutputModel:
    diff_scale: float = 1.0
    diff_sigma: float = 0.5
    heavy_thinking_median: int = 1024
    thinking_sigma: float = 0.75
    cap: int = 4096
    seed: int = 0

    def tokens(self, instance: Instance, model: Model) -> int:
        diff = instance.patch_tokens * self._lognormal("diff", instance, self.diff_scale,
                                                       self.diff_sigma)
        thinking = 0.0
        if model == "heavy" and self.heavy_thinking_median:
            thinking = self._lognormal("thinking", instance, self.heavy_thinking_median,
                                       self.thinking_sigma)
        return max(1, min(self.cap, round(diff + thinking)))

    def _lognormal(self, what: str, instance: Instance, median: float, sigma: float) -> float:
        rng = random.Random(stable_seed(self.seed, what, instance.instance_id))
        return rng.lognormvariate(math.log(median), sigma)

    def describe(self) -> str:
        thinking = (f"heavy thinks (median {self.heavy_thinking_median}, sigma "
                    f"{self.thinking_sigma})" if self.heavy_thinking_median else "no thinking")
        return (f"diff = gold patch x lognormal(median {self.diff_scale}, sigma "
                f"{self.diff_sigma}); {thinking}; cap {self.cap}")
