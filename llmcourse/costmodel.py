"""Predict, then measure: a decoding step's time from the bytes it reads, the FLOPs it does and this machine's
measured limits (`timing.memory_bandwidth_gbs`, `kernels.matmul_gflops`), before any step is timed.

A forward pass of T new positions (B rows each) attending over `past` cached ones and themselves:

- reads every weight once, however many positions it multiplies (a matrix times T rows streams the matrix once),
  plus, with a cache, the keys and values it attends over;
- does 2 FLOPs per weight of a block's Linears (12 C^2 per block) per position, 2 per weight of the output head for
  the last position only (`generate` asks for the last logits only), and attention's 4 C FLOPs per layer per
  (query, key) pair.

With memory bandwidth BW and matmul throughput F, a step takes at least bytes / BW and at least FLOPs / F. If reading
and computing overlap perfectly, it takes the larger of the two (`combine="max"`: the roofline); if they do not
overlap at all, their sum (`combine="sum"`). Both leave out what a real step also pays: small matmuls run below the
peak F measured on a large one, and every step has a fixed per-call overhead (Python, dispatching each operator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llmcourse.gpt import GPTConfig
from llmcourse.model_stats import formula_parameters

COMBINES = ("max", "sum")


@dataclass(frozen=True)
class StepCost:
    bytes: float  # read from (or written to) memory
    flops: float  # floating-point operations (for an int8 kernel: its integer multiply-adds, counted alike)

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(self.bytes + other.bytes, self.flops + other.flops)

    @property
    def intensity(self) -> float:
        """FLOPs per byte read: where the step sits on a roofline plot."""
        return self.flops / self.bytes

    def seconds(self, bandwidth_gbs: float, gflops: float, combine: str = "max") -> float:
        """Predicted time: max (perfect overlap) or sum (none) of bytes / bandwidth and FLOPs / FLOP rate."""
        if bandwidth_gbs <= 0 or gflops <= 0:
            raise ValueError(f"bandwidth_gbs and gflops must be positive, got {bandwidth_gbs} and {gflops}")
        memory, compute = self.bytes / (bandwidth_gbs * 1e9), self.flops / (gflops * 1e9)
        if combine == "max":
            return max(memory, compute)
        if combine == "sum":
            return memory + compute
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def matmul_weights(config: GPTConfig) -> int:
    """Weights one position multiplies (2 FLOPs each) if it takes every logit: each block's Linears, the tied output
    head, biases and LayerNorms (not the position table, of which a step reads one row)."""
    return formula_parameters(config) - config.block_size * config.n_embd


def fp32_bytes_read_per_step(config: GPTConfig) -> int:
    """Weight bytes a float32 decoding step reads: every weight but the position table, 4 bytes each (equal to
    `llmcourse.quantization.bytes_read_per_step` of a float32 GPT)."""
    return 4 * matmul_weights(config)


def forward_cost(config: GPTConfig, new_positions: int, past: int = 0, *, batch_size: int = 1, cache: bool = False,
                 weight_bytes: float | None = None, bytes_per_number: int = 4) -> StepCost:
    """One forward pass of `new_positions` tokens per row after `past` cached ones, logits of the last position only.

    weight_bytes: the weights a step reads (default: float32, `fp32_bytes_read_per_step`); pass
        `llmcourse.quantization.bytes_read_per_step(model)` for a quantized or prepacked copy.
    cache: whether the pass reads a KV-cache of `past` positions and writes `new_positions` more into it (without a
        cache the keys and values are made and used on the fly, small enough to stay in the CPU's caches).
    """
    if new_positions < 1 or past < 0 or batch_size < 1:
        raise ValueError(f"need new_positions >= 1, past >= 0 and batch_size >= 1, got {new_positions}, {past} and "
                         f"{batch_size}")
    if past + new_positions > config.block_size:
        raise ValueError(f"{past + new_positions} positions do not fit the context of {config.block_size}")
    C, L, T = config.n_embd, config.n_layer, new_positions
    head = config.vocab_size * C
    pairs = T * past + T * (T + 1) // 2  # causal: position i attends to past + i keys
    flops = 2 * batch_size * (12 * L * C * C * T + head) + 4 * L * C * pairs * batch_size  # Linears, head, attention
    read = fp32_bytes_read_per_step(config) if weight_bytes is None else weight_bytes
    if cache:
        read += 2 * L * C * (past + T) * batch_size * bytes_per_number
    return StepCost(float(read), float(flops))


def generation_steps(config: GPTConfig, prompt_tokens: int, new_tokens: int, *, use_cache: bool,
                     batch_size: int = 1, weight_bytes: float | None = None) -> list[StepCost]:
    """The forward passes of `llmcourse.generate.generate` for `new_tokens` tokens after a prompt: without a cache,
    one pass over the whole sequence so far per token (the last block_size tokens past the context); with it, the
    prompt once (the prefill), then one position per token until the cache is full, then as without."""
    if prompt_tokens < 1 or new_tokens < 1:
        raise ValueError(f"need prompt_tokens >= 1 and new_tokens >= 1, got {prompt_tokens} and {new_tokens}")
    block = config.block_size
    kwargs = dict(batch_size=batch_size, weight_bytes=weight_bytes)
    cached = use_cache and prompt_tokens < block
    steps = []
    for step in range(new_tokens):
        length = prompt_tokens + step  # tokens so far
        if cached and step == 0:
            steps.append(forward_cost(config, prompt_tokens, cache=True, **kwargs))
        elif cached and length - 1 < block:  # the cache holds length - 1 positions
            steps.append(forward_cost(config, 1, length - 1, cache=True, **kwargs))
        else:
            cached = False
            steps.append(forward_cost(config, min(length, block), **kwargs))
    return steps


def total(steps: Sequence[StepCost]) -> StepCost:
    """The bytes and FLOPs of several steps together."""
    return sum(steps, StepCost(0.0, 0.0))


def predict_seconds(steps: Sequence[StepCost], bandwidth_gbs: float, gflops: float, combine: str = "max") -> float:
    """Predicted time of the steps, one after the other (each step is combined on its own)."""
    return sum(step.seconds(bandwidth_gbs, gflops, combine) for step in steps)


def predict_kv_speedup(config: GPTConfig, prompt_tokens: int, new_tokens: int, bandwidth_gbs: float, gflops: float,
                       combine: str = "max") -> float:
    """Predicted speedup of generating `new_tokens` with the KV-cache over without, at batch 1, float32."""
    without, with_cache = (predict_seconds(generation_steps(config, prompt_tokens, new_tokens, use_cache=c),
                                           bandwidth_gbs, gflops, combine) for c in (False, True))
    return without / with_cache


def break_even_positions(config: GPTConfig, bandwidth_gbs: float, gflops: float,
                         weight_bytes: float | None = None) -> float:
    """Positions whose block matmuls take, at the peak FLOP rate, as long as reading the weights once: a step over
    fewer positions is memory bound, so one position costs about as much as this many."""
    read = fp32_bytes_read_per_step(config) if weight_bytes is None else weight_bytes
    return read / (bandwidth_gbs * 1e9) * gflops * 1e9 / (2 * 12 * config.n_layer * config.n_embd ** 2)


def plot_roofline(points: dict[str, tuple[float, float]], bandwidth_gbs: float, gflops: float, ax=None, *,
                  predicted: dict[str, tuple[float, float]] | None = None, title: str = "Roofline of this machine"):
    """Measured configurations on the roofline: name -> (FLOPs per byte, achieved GFLOP/s), against the two roofs
    (bandwidth x intensity, and the peak FLOP rate). `predicted`, if given, adds hollow markers at the cost model's
    figures for some of them. Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    xs = [x for x, _ in points.values()] + [x for x, _ in (predicted or {}).values()]
    ridge = gflops / bandwidth_gbs
    lo, hi = min(xs + [ridge]) / 3, max(xs + [ridge]) * 3
    grid = np.geomspace(lo, hi, 200)
    ax.plot(grid, np.minimum(bandwidth_gbs * grid, gflops), "k-", lw=1.5,
            label="roof: min(bandwidth x intensity, peak)")
    ax.axvline(ridge, color="grey", ls=":", lw=1, label=f"ridge point {ridge:.1f} FLOPs/byte")
    markers = "osD^vP*Xhp<>"
    for i, (name, (x, y)) in enumerate(points.items()):
        color = f"C{i % 10}"
        ax.plot(x, y, markers[i % len(markers)], color=color, ms=8, label=name)
        if predicted and name in predicted:
            px, py = predicted[name]
            ax.plot(px, py, markers[i % len(markers)], color=color, ms=12, mfc="none")
            ax.plot([x, px], [y, py], color=color, lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte read)",
           ylabel="achieved GFLOP/s", title=title, xlim=(lo, hi))
    if predicted:
        ax.plot([], [], "o", color="grey", mfc="none", ms=12, label="hollow: the cost model's prediction")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return ax
