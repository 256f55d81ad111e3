"""The RTX PRO 6000 profiles against published vLLM throughput on Blackwell workstation
GPUs. The profiles are derived from specifications (``profiles.memory_share_profile``);
nothing here tunes them.

Two published figures, each run on the simulator with a profile derived the same way for
the GPU and model measured:

- databasemart.com, "vLLM GPU benchmark" on an RTX PRO 5000 Blackwell (48 GB GDDR7,
  1,344 GB/s, 2,064 AI TOPS): Qwen3-8B in 16-bit, ``benchmark_serving.py`` with 50
  prompts sent at once, 100 input and 600 output tokens each: 14.12 s. Whether every
  reply reached 600 tokens is not stated; the simulation assumes it did.
- joshua8.ai, "Blackwell GPU shootout": Llama 3.1 8B on vLLM on an RTX PRO 6000 Max-Q
  peaks at 7,648 output tokens/s. The prompt and output lengths, the precision and the
  concurrency of the peak are not given in what was read; the simulation takes 128-token
  prompts, 512-token replies, bf16, and the best of 64, 128 and 256 requests at once, so
  this one is a ballpark.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.profiles import (
    QWEN3_8B,
    RTX_PRO_6000_MAXQ,
    Gpu,
    SimProfile,
    Transformer,
    gpu_profile,
)
from orla_sdk.backends.sim.replies import filler

RTX_PRO_5000 = Gpu("NVIDIA RTX PRO 5000 Blackwell", memory_bytes=48 * 2**30,
                   bandwidth_bytes_s=1.344e12, bf16_flops=2064e12 / 8)
# Llama 3.1 8B's config.json: 32 layers, hidden 4096, MLP 14336, 32 query and 8 KV heads
# of 128, vocabulary 128,256, untied embeddings.
LLAMA31_8B = Transformer("llama-3.1-8b", block_params=32 * (4096 * 6144 + 4096 * 4096
                                                           + 3 * 4096 * 14336),
                         embedding_params=128256 * 4096, tied_embeddings=False,
                         layers=32, kv_heads=8, head_dim=128)


async def batch_seconds(profile: SimProfile, requests: int, prompt: int, output: int) -> float:
    """Simulated seconds for ``requests`` sent at once to finish."""
    engine = SimEngine(profile)
    batch = [ChatRequest(model=profile.name,
                         messages=[{"role": "user",
                                    "content": filler(random.Random(n), prompt)}],
                         params={"max_tokens": output, "ignore_eos": True})
             for n in range(requests)]
    await asyncio.gather(*(engine.chat(r) for r in batch))
    return engine.clock.now()


def checks() -> list[str]:
    qwen_pro5000 = replace(gpu_profile(QWEN3_8B, RTX_PRO_5000), max_batch=256)
    seconds = asyncio.run(batch_seconds(qwen_pro5000, 50, 100, 600))
    llama = gpu_profile(LLAMA31_8B, RTX_PRO_6000_MAXQ)
    peak = max(requests * 512 / asyncio.run(batch_seconds(llama, requests, 128, 512))
               for requests in (64, 128, 256))
    return ["| published | GPU, model | measure | published | simulated | difference |",
            "|---|---|---|---:|---:|---:|",
            f"| databasemart.com | RTX PRO 5000, Qwen3-8B | 50 requests, 100 in / 600 out: "
            f"duration | 14.12 s | {seconds:.2f} s | {seconds / 14.12 - 1:+.0%} |",
            f"| joshua8.ai | RTX PRO 6000 Max-Q, Llama 3.1 8B | peak output tokens/s | 7,648 | "
            f"{peak:,.0f} | {peak / 7648 - 1:+.0%} |"]
