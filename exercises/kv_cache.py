"""The KV-cache in NumPy (notebook 07): append new keys and values to a preallocated cache, and attend over it.

A cache holds, for one attention layer, the keys and values of every token seen so far. It is preallocated for
`max_len` positions, shape (..., max_len, D) (in a GPT: (B, n_head, max_len, head_dim)), and only the first
`length` positions are filled. Generating one more token then costs one position's work: compute the new token's
query, key and value, append the key and value, and let the query attend over the `length + 1` cached positions.
The checks of bad input are provided (they run before your code), so each exercise is only the computation itself.
"""

from __future__ import annotations

import math

import numpy as np

from .attention import softmax


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_length(length, max_len: int) -> int:
    if not isinstance(length, (int, np.integer)) or isinstance(length, bool):
        raise TypeError(f"length must be an int (the number of filled cache positions), got {type(length).__name__}")
    if not 0 <= length <= max_len:
        raise ValueError(f"length must lie in [0, {max_len}] (the cache's max_len), got {length}")
    return int(length)


def _check_append(cache_k, cache_v, length, k_new, v_new) -> int:
    for name, a in (("cache_k", cache_k), ("cache_v", cache_v), ("k_new", k_new), ("v_new", v_new)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., positions, D), got shape {a.shape}")
    if cache_k.shape[:-1] != cache_v.shape[:-1]:
        raise ValueError(f"cache_k {cache_k.shape} and cache_v {cache_v.shape} must have the same shape up to D")
    if k_new.shape[:-2] != cache_k.shape[:-2] or k_new.shape[-1] != cache_k.shape[-1]:
        raise ValueError(f"k_new must have shape (..., T_new, D) = {cache_k.shape[:-2]} + (T_new, "
                         f"{cache_k.shape[-1]}) to match the cache, got {k_new.shape}")
    if v_new.shape[:-2] != cache_v.shape[:-2] or v_new.shape[-1] != cache_v.shape[-1]:
        raise ValueError(f"v_new must have shape (..., T_new, D_v) = {cache_v.shape[:-2]} + (T_new, "
                         f"{cache_v.shape[-1]}) to match the cache, got {v_new.shape}")
    if k_new.shape[-2] != v_new.shape[-2]:
        raise ValueError(f"k_new and v_new must hold the same number of new positions, got {k_new.shape} and "
                         f"{v_new.shape}")
    max_len = cache_k.shape[-2]
    length = _check_length(length, max_len)
    if length + k_new.shape[-2] > max_len:
        raise ValueError(f"the cache is full: it holds {max_len} positions, {length} are used and "
                         f"{k_new.shape[-2]} more were given; allocate a larger cache or drop the oldest tokens")
    return length


def _check_cached_attention(q, cache_k, cache_v, length) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    arrays = []
    for name, a in (("q", q), ("cache_k", cache_k), ("cache_v", cache_v)):
        a = np.asarray(a)
        if a.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
        arrays.append(a)
    q, cache_k, cache_v = arrays
    if q.ndim < 2 or q.shape[-2] != 1:
        raise ValueError(f"q must hold one query, shape (..., 1, D), got shape {q.shape}")
    if cache_k.ndim != q.ndim or cache_k.shape[:-2] != q.shape[:-2] or cache_k.shape[-1] != q.shape[-1]:
        raise ValueError(f"cache_k must have shape {q.shape[:-2]} + (max_len, {q.shape[-1]}) to match q "
                         f"{q.shape}, got {cache_k.shape}")
    if cache_v.shape[:-1] != cache_k.shape[:-1]:
        raise ValueError(f"cache_v must have shape {cache_k.shape[:-1]} + (D_v,) to match cache_k, got "
                         f"{cache_v.shape}")
    length = _check_length(length, cache_k.shape[-2])
    if length == 0:
        raise ValueError("the cache is empty (length 0): append the new token's key and value before attending")
    wide = np.result_type(q, cache_k, cache_v)
    return q.astype(wide, copy=False), cache_k.astype(wide, copy=False), cache_v.astype(wide, copy=False), length


def empty_cache(batch_shape: tuple[int, ...], max_len: int, head_dim: int,
                dtype: np.dtype = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A preallocated (keys, values) pair of zeros, each of shape batch_shape + (max_len, head_dim)."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    shape = tuple(batch_shape) + (max_len, head_dim)
    return np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype)


# -- the exercises -----------------------------------------------------------------------------------------------

def cache_append(cache_k: np.ndarray, cache_v: np.ndarray, length: int, k_new: np.ndarray,
                 v_new: np.ndarray) -> int:
    """Write new keys and values into the cache right after the `length` filled positions; return the new length.

    The cache is modified in place: positions `length` to `length + T_new - 1` of `cache_k` and `cache_v` receive
    `k_new` and `v_new`; every other position keeps its content. Nothing is reallocated (that is the point of a
    preallocated cache: appending costs T_new positions' worth of copying, not the whole history).

    Args:
        cache_k: keys, float array of shape (..., max_len, D), e.g. (B, n_head, max_len, head_dim).
        cache_v: values, float array of shape (..., max_len, D_v).
        length: number of positions already filled (0 <= length <= max_len).
        k_new: new keys, shape (..., T_new, D) with the cache's leading dimensions.
        v_new: new values, shape (..., T_new, D_v).

    Returns:
        The new length, `length + T_new` (a Python int).

    Raises:
        ValueError: if the shapes do not match or the new positions do not fit (`length + T_new > max_len`: the
            cache is full); TypeError if an argument is not a NumPy array (checked for you before your code runs).

    Hint: the new keys and values go right after the ones already stored, in the same arrays.
    More: `llmcourse hint cache_append`.
    """
    length = _check_append(cache_k, cache_v, length, k_new, v_new)
    raise NotImplementedError("cache_append: cache_append is not implemented yet; write your code here")


def cached_attention(q: np.ndarray, cache_k: np.ndarray, cache_v: np.ndarray, length: int) -> np.ndarray:
    """Attention of one new query over the first `length` cached keys and values: softmax(q K^T / sqrt(D)) V.

    The new token's own key and value are already in the cache (append first, then attend), so the query may see
    every one of the `length` filled positions: no causal mask is needed, because nothing in the cache lies in
    its future. Positions at or after `length` hold stale or zero entries and must not take part.

    Args:
        q: the new token's query, float array of shape (..., 1, D), e.g. (B, n_head, 1, head_dim).
        cache_k: cached keys, shape (..., max_len, D) with q's leading dimensions.
        cache_v: cached values, shape (..., max_len, D_v).
        length: number of filled positions to attend over (1 <= length <= max_len).

    Returns:
        Array of shape (..., 1, D_v), in the inputs' dtype: the attention output for the new token. It equals the
        last row of causal attention over the whole sequence.

    Raises:
        ValueError: if the shapes do not match or `length` is 0 or out of range; TypeError if an input is not a
            float array (checked for you before your code runs).

    Hint: causal attention for a single query, over the positions the cache holds so far.
    More: `llmcourse hint cached_attention`.
    """
    q, cache_k, cache_v, length = _check_cached_attention(q, cache_k, cache_v, length)
    raise NotImplementedError("cached_attention: cached_attention is not implemented yet; write your code here")
