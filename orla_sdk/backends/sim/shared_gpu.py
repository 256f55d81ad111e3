"""Several simulated engines on one GPU, as when two vLLM servers share a card.

Two engine processes on one GPU do not split it into halves: without NVIDIA's MPS the GPU
runs one process's kernels at a time and switches between them (time-slicing), so each
engine's forward pass still reads all its weights at the full memory bandwidth and
computes at the full tensor throughput, but it waits while the other engine's pass runs.
``SharedGpu`` models exactly that: each engine's step is booked on the device, first
come first served, and starts when the device is free. An engine alone on the device
runs as it would on its own; two busy engines take turns, step by step, so each slows by
the other's step time, and together they do no more work per second than the device.

What is not modelled: the cost of a context switch (tens of microseconds against steps
of milliseconds), and the overlap MPS would allow between one engine's memory-bound
decode and the other's compute-bound prefill. Each engine's profile says how much of the
GPU's memory it owns (``profiles.memory_share_profile``).

    gpu = SharedGpu("rtx-pro-6000")
    heavy = SharedGpuEngine("qwen3-8b-60pct", gpu=gpu, name="heavy")
    light = SharedGpuEngine("qwen3-4b-35pct", gpu=gpu, name="light")
"""

from __future__ import annotations

from typing import Any

from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimCall, SimEngine
from orla_sdk.backends.sim.profiles import SimProfile


class SharedGpu:
    """One device, booked one forward pass at a time, on a clock its engines share."""

    def __init__(self, name: str = "gpu", clock: VirtualClock | None = None) -> None:
        self.name = name
        self.clock = clock or VirtualClock()
        self.free_at = 0.0      # when the last booked pass ends
        self.busy_s = 0.0       # seconds of passes run
        self.waited_s = 0.0     # seconds passes waited for the device
        self.passes = 0

    def book(self, seconds: float) -> float:
        """Book a pass of ``seconds`` asked for now; returns when it ends."""
        now = self.clock.now()
        start = max(now, self.free_at)
        self.free_at = start + seconds
        self.busy_s += seconds
        self.waited_s += start - now
        self.passes += 1
        return self.free_at


class SharedGpuEngine(SimEngine):
    """A ``SimEngine`` whose steps run on a ``SharedGpu``: a step costs what the profile
    says, but starts only once the device has finished the passes booked before it."""

    def __init__(self, profile: str | SimProfile, *, gpu: SharedGpu, **options: Any) -> None:
        super().__init__(profile, clock=gpu.clock, **options)
        self.gpu = gpu

    def _step_seconds(self, chunks: dict[SimCall, int], decoding: int, held: int) -> float:
        alone = super()._step_seconds(chunks, decoding, held)
        return self.gpu.book(alone) - self.clock.now()
