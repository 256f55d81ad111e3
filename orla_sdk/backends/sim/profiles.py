"""Cost profiles for the simulated engine: what one model costs on one machine.

A profile holds the linear costs the simulator charges (see ``docs/simulator.md``):

- prefill, per request: ``prefill_base_s + prefill_per_token_s * uncached_prompt_tokens``;
- one decode step, shared by every running sequence: ``decode_base_s + decode_per_seq_s *
  batch + decode_per_kv_token_s * tokens_held_by_the_batch``;

plus the engine's limits: KV capacity in tokens and the most sequences decoded together.

The datacenter profiles are derived from first principles (weight bytes over memory
bandwidth for a decode step, FLOPs over tensor-core throughput for prefill) by
``gpu_profile``; the CPU profile holds numbers fitted against the real llama.cpp server
by ``python -m benchmarks.sim_fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orla_sdk.backends.declare import DEFAULT_LOCAL_MODEL


@dataclass(frozen=True)
class SimProfile:
    name: str
    machine: str
    prefill_base_s: float
    prefill_per_token_s: float
    decode_base_s: float
    decode_per_seq_s: float
    decode_per_kv_token_s: float
    capacity_tokens: int
    max_batch: int
    max_step_tokens: int | None = None  # prompt chunks plus decodes in one step
    output_tokens_median: int = 64
    source: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: float
    bandwidth_bytes_s: float
    bf16_flops: float


@dataclass(frozen=True)
class Transformer:
    """The shape numbers of a dense decoder that set its serving costs."""

    name: str
    block_params: float      # all transformer layers, embeddings excluded
    embedding_params: float  # one vocabulary matrix
    tied_embeddings: bool
    layers: int
    kv_heads: int
    head_dim: int

    def weight_bytes(self) -> float:
        tables = 1 if self.tied_embeddings else 2
        return 2.0 * (self.block_params + tables * self.embedding_params)  # bf16

    def bytes_read_per_step(self) -> float:
        # every layer and the output projection; the input embedding is a row lookup
        return 2.0 * (self.block_params + self.embedding_params)

    def kv_bytes_per_token(self) -> float:
        return 2.0 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16


H100_SXM = Gpu("NVIDIA H100 SXM 80GB", memory_bytes=80 * 2**30,
               bandwidth_bytes_s=3.35e12, bf16_flops=989e12)

# From the models' config.json: Qwen3-4B hidden 2560, MLP 9728, tied embeddings;
# Qwen3-8B hidden 4096, MLP 12288; both 36 layers, 32 query heads, 8 KV heads of 128,
# vocabulary 151,936. Block parameters are the attention and MLP matrices.
QWEN3_4B = Transformer("qwen3-4b", block_params=36 * (2560 * 6144 + 4096 * 2560
                                                     + 3 * 2560 * 9728),
                       embedding_params=151936 * 2560, tied_embeddings=True,
                       layers=36, kv_heads=8, head_dim=128)
QWEN3_8B = Transformer("qwen3-8b", block_params=36 * (4096 * 6144 + 4096 * 4096
                                                     + 3 * 4096 * 12288),
                       embedding_params=151936 * 4096, tied_embeddings=False,
                       layers=36, kv_heads=8, head_dim=128)

MEMORY_EFFICIENCY = 0.8    # share of peak bandwidth a decode step's GEMVs reach
COMPUTE_EFFICIENCY = 0.5   # share of peak bf16 FLOPs a prefill GEMM reaches
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
RUNTIME_RESERVE_BYTES = 5e9   # activations, CUDA graphs and allocator slack


def gpu_profile(model: Transformer, gpu: Gpu, *, max_batch: int = 1024,
                max_step_tokens: int = 8192) -> SimProfile:
    """A profile from first principles: a decode step reads every weight once and each
    sequence's KV cache; each token costs 2 FLOPs per weight."""
    bandwidth = MEMORY_EFFICIENCY * gpu.bandwidth_bytes_s
    flops = COMPUTE_EFFICIENCY * gpu.bf16_flops
    weight_read_s = model.bytes_read_per_step() / bandwidth
    kv_room = (GPU_MEMORY_UTILIZATION * gpu.memory_bytes - model.weight_bytes()
               - RUNTIME_RESERVE_BYTES)
    return SimProfile(
        name=model.name, machine=gpu.name,
        prefill_base_s=weight_read_s,
        prefill_per_token_s=2 * model.block_params / flops,  # logits only for the last token
        decode_base_s=weight_read_s,
        decode_per_seq_s=2 * (model.block_params + model.embedding_params) / flops,
        decode_per_kv_token_s=model.kv_bytes_per_token() / bandwidth,
        capacity_tokens=int(kv_room // model.kv_bytes_per_token()),
        max_batch=max_batch, max_step_tokens=max_step_tokens,
        source=f"first principles on {gpu.name}: bandwidth x {MEMORY_EFFICIENCY}, "
               f"bf16 FLOPs x {COMPUTE_EFFICIENCY}")


# Fitted by `python -m benchmarks.sim_fit` against llama.cpp (xllamacpp) serving
# SmolLM2-135M-Instruct Q4_1 on a 2-core AMD EPYC; the fit table is in docs/simulator.md.
# The prefill intercept came out negative and was dropped.
SMOLLM2_135M_CPU = SimProfile(
    name="smollm2-135m", machine="2-core AMD EPYC (x86_64, AVX-512), llama.cpp",
    prefill_base_s=0.0, prefill_per_token_s=3.07e-3,
    decode_base_s=1.30e-3, decode_per_seq_s=5.40e-3, decode_per_kv_token_s=5.29e-6,
    capacity_tokens=4 * 4096, max_batch=4, max_step_tokens=2048,
    source="fitted against the real llama.cpp server (benchmarks/sim_fit.py)")

# Every cost zero: what is left of a run's time is orla's own overhead.
INSTANT = SimProfile(
    name="instant", machine="none", prefill_base_s=0.0, prefill_per_token_s=0.0,
    decode_base_s=0.0, decode_per_seq_s=0.0, decode_per_kv_token_s=0.0,
    capacity_tokens=1 << 30, max_batch=1 << 20, output_tokens_median=16,
    source="zero latency, for measuring overhead")

PROFILES: dict[str, SimProfile] = {
    "instant": INSTANT,
    "qwen3-4b": gpu_profile(QWEN3_4B, H100_SXM),
    "qwen3-8b": gpu_profile(QWEN3_8B, H100_SXM),
    "smollm2-135m": SMOLLM2_135M_CPU,
}
ALIASES = {DEFAULT_LOCAL_MODEL: "smollm2-135m"}


def get_profile(name: str) -> SimProfile:
    """The profile called ``name`` (case-insensitive; the local model's id also works)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"no simulator profile {name!r}; known profiles: {known}. "
                         "Build your own with SimProfile(...) or gpu_profile(...).")
    return PROFILES[key]


# ---- engines sharing one GPU ---------------------------------------------------------------
# NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition (NVIDIA's datasheet): 96 GB of
# GDDR7 (32 chips of 3 GiB), 1,792 GB/s, 3,511 AI TOPS. AI TOPS is FP4 with 2:4 sparsity,
# so dense bf16 tensor throughput is an eighth of it (a half for the sparsity, a quarter
# for FP4 against bf16): about 439 TFLOPS.
RTX_PRO_6000_MAXQ = Gpu("NVIDIA RTX PRO 6000 Blackwell Max-Q", memory_bytes=96 * 2**30,
                        bandwidth_bytes_s=1.792e12, bf16_flops=3511e12 / 8)


def memory_share_profile(model: Transformer, gpu: Gpu, share: float, *, max_batch: int = 1024,
                         max_step_tokens: int = 8192) -> SimProfile:
    """``gpu_profile`` for an engine that owns ``share`` of the GPU's memory (vLLM's
    ``--gpu-memory-utilization``) while other engines use the rest. The costs are the
    whole GPU's: engines on one GPU take turns at it (``shared_gpu.SharedGpu``), they do
    not split it. The KV capacity is what the share leaves after the weights and the
    runtime reserve."""
    alone = gpu_profile(model, gpu, max_batch=max_batch, max_step_tokens=max_step_tokens)
    kv_room = share * gpu.memory_bytes - model.weight_bytes() - RUNTIME_RESERVE_BYTES
    return replace(alone, name=f"{model.name}-{round(100 * share)}pct",
                   capacity_tokens=int(kv_room // model.kv_bytes_per_token()),
                   source=f"{alone.source}; {share:.0%} of the GPU's memory")


# The Orla paper's SWE-bench machine: Qwen3-8B with 60 % and Qwen3-4B with 35 % of one
# RTX PRO 6000 Blackwell Max-Q (the released example's vLLM settings).
PROFILES.update({
    "qwen3-8b-60pct": memory_share_profile(QWEN3_8B, RTX_PRO_6000_MAXQ, 0.60),
    "qwen3-4b-35pct": memory_share_profile(QWEN3_4B, RTX_PRO_6000_MAXQ, 0.35),
})

# The Orla paper's DAG-MATH machine: Qwen3-8B alone on SGLang with 85 % of the same GPU
# (``--mem-fraction-static`` in the released example).
PROFILES["qwen3-8b-85pct"] = memory_share_profile(QWEN3_8B, RTX_PRO_6000_MAXQ, 0.85)

# The same engine with one thread (``EngineConfig(threads=1)``), fitted by
# ``python -m benchmarks.sim_fidelity --fit`` (``benchmarks.sim_fit``'s measurements, the
# fastest of three runs) on the same machine. Both intercepts came out negative and were
# dropped; the fit table is in docs/simulator.md.
SMOLLM2_135M_CPU_1T = replace(
    SMOLLM2_135M_CPU, name="smollm2-135m-1t",
    machine="2-core AMD EPYC (x86_64, AVX-512), llama.cpp, 1 thread",
    prefill_per_token_s=4.24e-3, decode_base_s=0.0, decode_per_seq_s=6.94e-3,
    decode_per_kv_token_s=7.54e-6,
    source="fitted against the real llama.cpp server with one thread "
           "(benchmarks/sim_fidelity.py --fit)")
PROFILES["smollm2-135m-1t"] = SMOLLM2_135M_CPU_1T
