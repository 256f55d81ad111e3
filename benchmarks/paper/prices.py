"""What a request costs at public per-token prices.

The prices are OpenRouter's list prices for the two models (pages ``openrouter.ai/qwen/
qwen3-8b`` and ``openrouter.ai/qwen/qwen3-4b``, as stored when this experiment was
written), in US dollars per million tokens. OpenRouter lists the hybrid Qwen3-4B, not
the Instruct-2507 release the paper's light engine served; its price stands in for it.
Cached prompt tokens are charged in full, as OpenRouter lists no discount for them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float
    source: str

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + output_tokens * self.output_per_m) / 1e6


PRICES = {
    "heavy": Price(0.05, 0.40, "OpenRouter, qwen/qwen3-8b"),
    "light": Price(0.0715, 0.273, "OpenRouter, qwen/qwen3-4b"),
}
