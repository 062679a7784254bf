"""Attention without the T x T matrix (notebook 12): the online softmax and tiled attention.

Causal attention as in notebook 02 holds the scores of every query with every key, a (T, S) matrix. The online
softmax reads the scores one chunk at a time and keeps two running numbers per row: the largest score seen so far
(m) and the sum of exp(score - m) (l). When a chunk brings a larger maximum, what was summed so far is rescaled by
exp(m_old - m_new). Tiled attention adds a third running quantity, the sum of exp(score - m) v, rescaled the same way:
at the end acc / l is exactly softmax(scores) @ v, while the scores held at any time are only (T, block).
The checks of bad input are provided (they run before your code), so each exercise is only the computation itself.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_chunks(chunks) -> list[np.ndarray]:
    if isinstance(chunks, np.ndarray) or not isinstance(chunks, Iterable):
        raise TypeError("chunks must be a list of 1-D arrays (the pieces of one row of scores), got "
                        f"{type(chunks).__name__}")
    chunks = [np.asarray(c) for c in chunks]
    for i, c in enumerate(chunks):
        if c.ndim != 1:
            raise ValueError(f"chunk {i} must be 1-D (a piece of one row of scores), got shape {c.shape}")
        if c.dtype.kind not in "fiu":
            raise TypeError(f"chunk {i} must hold real numbers, got dtype {c.dtype}")
        if np.isnan(c).any() or (c == np.inf).any():
            raise ValueError(f"chunk {i} holds NaN or +inf; scores must be finite (or -inf for a masked position)")
    values = [c for c in chunks if c.size]
    if not values or all((c == -np.inf).all() for c in values):
        raise ValueError("the chunks hold no finite score: the softmax of nothing (or of only -inf) is undefined")
    dtype = np.result_type(*chunks, np.float32)  # float32 stays float32, integers become float64
    return [c.astype(dtype, copy=False) for c in chunks]


def _check_attention(q, k, v, block, causal) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    arrays = []
    for name, a in (("q", q), ("k", k), ("v", v)):
        a = np.asarray(a)
        if a.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., positions, D), got shape {a.shape}")
        arrays.append(a)
    q, k, v = arrays
    if k.shape[-1] != q.shape[-1] or k.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"k must have shape {q.shape[:-2]} + (S, {q.shape[-1]}) to match q {q.shape}, got {k.shape}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must have shape {k.shape[:-1]} + (D_v,) to match k {k.shape}, got {v.shape}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be an int >= 1 (keys per tile), got {block!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"causal attention with more queries ({q.shape[-2]}) than keys ({k.shape[-2]}): each query "
                         "needs its own key among them")
    if k.shape[-2] == 0:
        raise ValueError("there are no keys (S = 0): every query needs at least one key to attend to")
    wide = np.result_type(q, k, v)
    return q.astype(wide, copy=False), k.astype(wide, copy=False), v.astype(wide, copy=False), int(block)


# -- the exercises -----------------------------------------------------------------------------------------------

def online_softmax(chunks: list[np.ndarray]) -> np.ndarray:
    """softmax of the concatenation of 1-D `chunks`, computed in one pass over them keeping two running numbers.

    Read the chunks in order, keeping only the largest value seen so far, m, and the sum of exp(x - m) over every
    value seen so far, l. A chunk whose maximum exceeds m changes the reference point: multiply l by exp(m_old -
    m_new) before adding the chunk's own sum. After the last chunk, softmax(x) = exp(x - m) / l for every value
    (a second, cheap pass). Never concatenate the chunks and never call a softmax: that is what this replaces.

    Args:
        chunks: a list of 1-D arrays of real numbers (the pieces of one row of scores, in order); a chunk may be
            empty, and -inf marks a masked position (its probability is 0).

    Returns:
        1-D array of length sum(len(c) for c in chunks), summing to 1: float32 if every chunk is float32 (or
        float16), float64 otherwise (integers included).

    Raises:
        ValueError: if a chunk is not 1-D, holds NaN or +inf, or no chunk holds a finite value; TypeError if
            `chunks` is not a list of arrays of numbers (checked for you before your code runs).

    Hint: m only grows; when it grows, what you summed so far was measured against the old m and must be rescaled.
    More: `llmcourse hint online_softmax`.
    """
    chunks = _check_chunks(chunks)
    raise NotImplementedError("online_softmax: online_softmax is not implemented yet; write your code here")


def tiled_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int, causal: bool = True) -> np.ndarray:
    """softmax(q k^T / sqrt(D) [+ causal mask]) v, visiting the keys `block` at a time, never holding (T, S) scores.

    For each tile of keys k[..., s:s + block, :] compute the scores (..., T, block), mask them if causal, and fold
    them into three running quantities per query: m (..., T, 1) the largest score so far, l (..., T, 1) the sum of
    exp(score - m), and acc (..., T, D_v) the sum of exp(score - m) * v. When a tile raises m, rescale l and acc by
    exp(m_old - m_new) first. The result is acc / l. The last tile may be shorter than `block`.

    Causal: query i is the (S - T + i)-th position, as when T new queries attend over S cached keys (T <= S): it
    sees keys 0 .. S - T + i. With T = S that is notebook 02's causal mask. A query may see no key of a tile at
    all (its scores are all -inf): that tile must add nothing.

    Args:
        q: queries, float array of shape (..., T, D).
        k: keys, shape (..., S, D) with q's leading dimensions.
        v: values, shape (..., S, D_v).
        block: keys per tile, an int >= 1 (it need not divide S).
        causal: whether to apply the causal mask (default True).

    Returns:
        Array (..., T, D_v) in the inputs' dtype (float32 stays float32), equal to ordinary attention up to rounding.

    Raises:
        ValueError: if the shapes do not fit, block < 1, S = 0, or causal with T > S; TypeError if an input is not a
            float array (checked for you before your code runs).

    Hint: the online softmax of `online_softmax`, for every query row at once, carrying a weighted sum of values too.
    More: `llmcourse hint tiled_attention`.
    """
    q, k, v, block = _check_attention(q, k, v, block, causal)
    raise NotImplementedError("tiled_attention: tiled_attention is not implemented yet; write your code here")
