"""Measuring speed honestly: warm-up, repeats, median and spread, and this machine's limits.

Every speed figure of the course is a ratio against a baseline measured in the same run, shown next to its limit.
The limits are measured here: memory bandwidth (batch-1 decoding reads every weight once per token, so
tokens/s <= bandwidth / bytes read per token) and matrix-multiply throughput.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Measurement:
    samples: tuple[float, ...]  # seconds per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the range between the fastest and slowest repeat, relative to the median."""
        return (max(self.samples) - min(self.samples)) / (2 * self.median) if self.median > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.median * 1e3:.2f} ms ± {100 * self.spread:.0f}% (median of {len(self.samples)})"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.synchronize()


def measure(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> Measurement:
    """Call `fn` `warmup` times untimed, then time `repeats` calls (waiting for the GPU, if any, to finish)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return Measurement(tuple(samples))


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Sustained memory bandwidth in GB/s: the best rate of reading a buffer much larger than the CPU caches (a sum,
    as decoding reads its weights) or of copying it (a copy reads and writes every byte: 2 x size bytes moved).

    The best of the repeats and of the two patterns is taken as the machine's limit, so that the fractions of it
    reported elsewhere are not flattered by a pessimistic limit.
    """
    n = megabytes * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    size = src.numel() * src.element_size()
    read = min(measure(lambda: src.sum(), warmup=1, repeats=repeats).samples)
    copy = min(measure(lambda: dst.copy_(src), warmup=1, repeats=repeats).samples)
    return max(size / read, 2 * size / copy) / 1e9


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Float32 matrix-multiply throughput in GFLOP/s (2 n^3 floating-point operations per n x n product): the best
    of PyTorch's default kernel and, on a CPU with oneDNN, oneDNN's with the weight prepacked (`llmcourse.kernels`),
    since the course runs both: the roof is the fastest kernel's."""
    from llmcourse.kernels import PrepackedLinear, prepack_available

    a = torch.randn(n, n)
    weight = torch.nn.Linear(n, n, bias=False)
    runs = [lambda: a @ weight.weight.T]
    if prepack_available("cpu"):
        packed = PrepackedLinear(weight)
        runs.append(lambda: packed(a))
    with torch.no_grad():
        best = min(min(measure(run, warmup=2, repeats=repeats).samples) for run in runs)
    return 2 * n ** 3 / best / 1e9


def decode_bound_tok_s(bytes_per_token: float, bandwidth_gbs: float) -> float:
    """The memory-bandwidth limit of decoding: every byte read once per token -> tokens/s <= bandwidth / bytes."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be positive, got {bytes_per_token}")
    return bandwidth_gbs * 1e9 / bytes_per_token


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, Measurement]:
    """Time each run `repeats` times, taking turns, so that a change of the machine's load hits all of them."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name] += measure(run, warmup=0, repeats=1).samples
    return {name: Measurement(tuple(s)) for name, s in samples.items()}


class _CountCalls(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def torch_calls(fn: Callable[[], object]) -> int:
    """How many PyTorch functions and tensor methods one call of `fn` makes (calls they make in turn not counted).
    Each costs a fixed overhead whatever its size, which is what a small model's decoding step mostly pays."""
    with _CountCalls() as counter:
        fn()
    return counter.calls
