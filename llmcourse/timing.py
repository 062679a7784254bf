"""Measuring speed honestly: warm-up, repeats, median and spread, setups timed in turns, decoding speed, and this
machine's memory bandwidth.

Every speed figure of the course is a ratio against a baseline measured in the same run, shown next to its limit.
Batch-1 decoding reads every weight once per token, so tokens/s <= bandwidth / bytes read per token: the bandwidth
is measured here; the matrix-multiply throughput, which needs the course's kernels, in `llmcourse.kernels`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from llmcourse import native
from llmcourse.generate import generate


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
    and a matrix-vector product on the course's C kernel where it is built, as decoding reads its weights) or of
    copying it (a copy reads and writes every byte: 2 x size bytes moved).

    The best of the repeats and of the patterns is taken as the machine's limit, so that the fractions of it
    reported elsewhere are not flattered by a pessimistic limit: on a 2-core Xeon the C kernel, which keeps more
    reads in flight (two streams per thread, prefetched), read 27-30 GB/s where PyTorch's sum read 24.
    """
    n = megabytes * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    size = src.numel() * src.element_size()
    read = min(measure(lambda: src.sum(), warmup=1, repeats=repeats).samples)
    copy = min(measure(lambda: dst.copy_(src), warmup=1, repeats=repeats).samples)
    rates = [size / read, 2 * size / copy]
    if native.available():  # n is a multiple of 1024 (megabytes x 2^18 floats)
        product, x = native.prepare(src.view(-1, 1024)), torch.ones(1, 1024)  # reads every byte once: a weight matrix
        rates.append(size / min(measure(lambda: product(x), warmup=1, repeats=repeats).samples))
    return max(rates) / 1e9


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


def decoding_speed(setups: dict[str, tuple[nn.Module, int, bool]], *, new_tokens: int = 16,
                   repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Greedy decoding speed of several setups, name -> (model, batch size, use the KV-cache), measured in this
    process: each row generates `new_tokens` tokens from a 1-token prompt (so exactly `new_tokens` forward passes);
    one warm-up each, then `repeats` timings per setup taken in turns, so that a change of the machine's load hits
    all of them alike. On a small machine shared with other programs, `torch.set_num_threads(1)` first: threads
    that wait for each other slow the int8 kernel down most.

    Returns name -> (tokens/s of the whole batch from the median time, spread: half the range over the median).
    """
    runs = {}
    for name, (model, batch_size, use_cache) in setups.items():
        seeded = torch.Generator().manual_seed(0)  # the same prompt for every setup of a batch size
        prompt = torch.randint(0, model.config.vocab_size, (batch_size, 1), generator=seeded)
        prompt = prompt.to(next(model.parameters()).device)
        runs[name] = lambda m=model, p=prompt, c=use_cache: generate(m, p, new_tokens, temperature=0.0, use_cache=c)
    for run in runs.values():
        run()  # warm-up
    times = interleaved(runs, repeats)
    return {name: (setups[name][1] * new_tokens / m.median, m.spread) for name, m in times.items()}
