"""Attention without the T x T matrix: the online softmax and tiled attention (the idea of FlashAttention).

Causal attention as written in notebook 02 builds the scores q k^T of every query with every key, a T x T matrix:
for T = 32,768 tokens that is 4 GB in float32 per head. Tiled attention visits the keys one block at a time and
keeps, for each query, only three running quantities: the largest score seen (m), the sum of exp(score - m) (l), and
the sum of exp(score - m) v (acc). A new block with a larger maximum rescales the old sums by exp(m_old - m_new), so
at the end acc / l is exactly softmax(scores) @ v. Memory for the scores: (T, block) instead of (T, T); the
arithmetic is the same.

    out = tiled_attention(q, k, v, block=64)           # equals causal attention to float rounding
    peak_bytes(lambda: tiled_attention(q, k, v, 64))   # the largest memory allocated while it ran (NumPy)
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from typing import Callable

import numpy as np


def online_softmax(chunks: Iterable[np.ndarray]) -> np.ndarray:
    """softmax over the concatenation of 1-D chunks, reading each chunk once and keeping two numbers between them:
    the running maximum m and the running sum of exp(x - m). The chunks are then re-read once to normalise."""
    chunks = [np.asarray(c, dtype=np.float64) for c in chunks]
    m, total = -np.inf, 0.0
    for chunk in chunks:
        if chunk.size == 0 or chunk.max() == -np.inf:
            continue  # nothing to add: every exp(x - m) is 0
        new_m = max(m, float(chunk.max()))
        total = total * np.exp(m - new_m) + float(np.exp(chunk - new_m).sum())  # rescale the old sum, add the new
        m = new_m
    if not np.isfinite(m):
        raise ValueError("online_softmax needs at least one finite value")
    return np.concatenate([np.exp(c - m) / total for c in chunks])


def tiled_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int = 64, *,
                    causal: bool = True) -> np.ndarray:
    """softmax(q k^T / sqrt(d) [+ causal mask]) v for q (..., T, d), k (..., S, d), v (..., S, dv), visiting keys in
    blocks of `block`: the scores held at any time are (..., T, block), never (..., T, S). Causal: query i sees keys
    0..i + (S - T) (the last T keys are the queries' own positions, as with a KV-cache)."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    q, k, v = (np.asarray(a) for a in (q, k, v))
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes do not fit attention: q {q.shape}, k {k.shape}, v {v.shape}")
    T, S = q.shape[-2], k.shape[-2]
    if causal and T > S:
        raise ValueError(f"causal attention with more queries ({T}) than keys ({S}): each query needs its own key")
    dtype = np.result_type(q, k, v, np.float32)
    scale = 1.0 / np.sqrt(q.shape[-1])
    m = np.full(q.shape[:-1] + (1,), -np.inf, dtype=dtype)  # (..., T, 1) running max
    l = np.zeros(q.shape[:-1] + (1,), dtype=dtype)  # (..., T, 1) running sum of exp
    acc = np.zeros(q.shape[:-1] + (v.shape[-1],), dtype=dtype)  # (..., T, dv)
    query_pos = np.arange(T)[:, None] + (S - T)  # (T, 1) position of each query among the keys
    for start in range(0, S, block):
        stop = min(start + block, S)
        if causal and start > query_pos[-1, 0]:
            break  # every later key is in every query's future
        scores = (q @ np.swapaxes(k[..., start:stop, :], -1, -2)) * scale  # (..., T, block)
        if causal:
            scores = np.where(np.arange(start, stop)[None, :] <= query_pos, scores, -np.inf)
        new_m = np.maximum(m, scores.max(axis=-1, keepdims=True))  # (..., T, 1)
        safe = np.where(np.isfinite(new_m), new_m, 0.0)  # a row with no visible key yet keeps zeros
        correction = np.exp(np.where(np.isfinite(m), m - safe, -np.inf))  # rescale what was summed so far
        p = np.exp(scores - safe)  # (..., T, block)
        l = l * correction + p.sum(axis=-1, keepdims=True)
        acc = acc * correction + p @ v[..., start:stop, :]
        m = new_m
    return (acc / l).astype(dtype)


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak memory that NumPy (and Python) allocated while `fn` ran, above what was allocated before, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
