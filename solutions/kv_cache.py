"""The KV-cache in NumPy (notebook 07): append new keys and values to a preallocated cache, and attend over it.

A cache holds, for one attention layer, the keys and values of every token seen so far. It is preallocated for
`max_len` positions, shape (..., max_len, D) (in a GPT: (B, n_head, max_len, head_dim)), and only the first
`length` positions are filled. Generating one more token then costs one position's work: compute the new token's
query, key and value, append the key and value, and let the query attend over the `length + 1` cached positions.
The checks of bad input are provided (they run before your code), so each exercise is only the computation itself.
The challenge at the end, `gpt_forward_cached`, is the whole PyTorch GPT's forward pass with a cache, and checks its
own input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

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
    # BEGIN SOLUTION
    end = length + k_new.shape[-2]
    cache_k[..., length:end, :] = k_new
    cache_v[..., length:end, :] = v_new
    return end
    # END SOLUTION


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
    # BEGIN SOLUTION
    k, v = cache_k[..., :length, :], cache_v[..., :length, :]  # (..., length, D), (..., length, D_v)
    scores = (q @ np.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (..., 1, length)
    return softmax(scores, axis=-1) @ v  # (..., 1, D_v)
    # END SOLUTION


# -- challenge: the PyTorch GPT's forward pass with a cache ---------------------------------------------------------

def gpt_forward_cached(weights: dict[str, torch.Tensor], n_head: int, idx: torch.Tensor, cache_k: torch.Tensor,
                       cache_v: torch.Tensor, length: int, positions: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The GPT's forward pass over new tokens, with the keys and values of earlier tokens taken from a cache: what
    `llmcourse.gpt.GPT.forward(idx, cache=..., positions=..., attention_mask=...)` computes.

    `weights` is `model.state_dict()` of a `llmcourse.gpt.GPT` (GPT-2's layout, with biases; Linear weights are
    stored (out_features, in_features), so a Linear layer is `F.linear(x, W, b)` = x @ W.T + b):
    "transformer.wte.weight" (V, C) and "transformer.wpe.weight" (P, C), the token and position embeddings; for each
    block l, with prefix "transformer.h.{l}.": "ln_1.weight", "ln_1.bias" (C,), "attn.c_attn.weight" (3C, C) and
    "attn.c_attn.bias" (3C,) (queries, keys and values in one matrix, in that order), "attn.c_proj.weight" (C, C) and
    bias, "ln_2.weight" and bias, "mlp.c_fc.weight" (4C, C) and bias, "mlp.c_proj.weight" (C, 4C) and bias; then
    "transformer.ln_f.weight" and bias, and "lm_head.weight" (V, C). n_layer is the number of blocks in `weights`.

    The cache holds every layer's keys and values: cache_k[l, b, h, j] is the key of head h of layer l for the token
    at cache position j of row b; the first `length` positions are filled. For the T new tokens:

    1. x = wte[idx] + wpe[positions] (B, T, C); positions default to length, length + 1, ..., length + T - 1.
    2. Each block: x = x + attention(LayerNorm_1(x)), then x = x + MLP(LayerNorm_2(x)). LayerNorm has eps 1e-5, the
       MLP is c_proj(GELU(c_fc(x))) with GELU's tanh approximation. Attention: q, k, v from c_attn, each split into
       n_head heads of C // n_head channels (head h holds channels h * hd to (h + 1) * hd - 1); write k and v into
       positions length .. length + T - 1 of the layer's cache, then let every new query attend over cache
       positions 0 .. length + T - 1 with scores q.k / sqrt(hd): new token i (at cache position length + i) may see
       position j when j <= length + i, and, with an attention_mask, only where attention_mask[b, j] is True, but
       always its own position (so that a padding token's query stays finite). Merge the heads, then c_proj.
    3. logits = LayerNorm_f(x) @ lm_head.T.

    Args:
        weights: dict name -> tensor, as above (float32 or float64, all one dtype).
        n_head: number of attention heads (divides C).
        idx: int64 (or int32) tensor (B, T) of new token ids, T >= 1.
        cache_k, cache_v: tensors (n_layer, B, n_head, max_len, C // n_head) in the weights' dtype; written in place
            at positions length .. length + T - 1 of every layer, and nowhere else.
        length: number of positions already filled, 0 <= length.
        positions: optional int64 tensor (B, T), the position of each new token (per-row positions of a left-padded
            batch), each in 0 .. P - 1.
        attention_mask: optional bool tensor (B, length + T) over every cache position, past and new: False marks
            padding, which no token attends to (except itself).

    Returns:
        The logits (B, T, V) of the new tokens, in the weights' dtype. The caller's cache now holds length + T
        positions.

    Raises:
        ValueError: if idx is not a (B, T) integer tensor with T >= 1; if cache_k or cache_v does not have the shape
            above; if length < 0 or length + T > max_len (say the cache is full); if positions (given, or by default)
            fall outside 0 .. P - 1; if positions is not (B, T) or attention_mask is not (B, length + T).

    Hint: the GPT forward of notebook 04 in PyTorch, with one change in attention: keys and values are written into
    the cache first, and the new queries attend over everything the cache holds, under a mask of which position
    may see which.
    More: `llmcourse hint gpt_forward_cached`.
    """
    # BEGIN SOLUTION
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32) \
            or idx.shape[1] == 0:
        raise ValueError(f"idx must be an integer tensor of token ids (B, T) with T >= 1, got {idx!r:.80}")
    B, T = idx.shape
    wte, wpe = weights["transformer.wte.weight"], weights["transformer.wpe.weight"]
    C = wte.shape[1]
    hd = C // n_head
    n_layer = sum(1 for key in weights if key.startswith("transformer.h.") and key.endswith(".ln_1.weight"))
    for name, cache in (("cache_k", cache_k), ("cache_v", cache_v)):
        if cache.dim() != 5 or cache.shape[:3] != (n_layer, B, n_head) or cache.shape[4] != hd \
                or cache.shape != cache_k.shape:
            raise ValueError(f"{name} must have shape (n_layer, B, n_head, max_len, head_dim) = ({n_layer}, {B}, "
                             f"{n_head}, max_len, {hd}), got {tuple(cache.shape)}")
    max_len, S = cache_k.shape[3], length + T
    if length < 0 or S > max_len:
        raise ValueError(f"the cache is full: it holds {max_len} positions, {length} are used and {T} more were "
                         "given")
    if positions is None:
        positions = torch.arange(length, S).expand(B, T)
    elif tuple(positions.shape) != (B, T):
        raise ValueError(f"positions must have shape (B, T) = {(B, T)}, got {tuple(positions.shape)}")
    if positions.min() < 0 or positions.max() >= wpe.shape[0]:
        raise ValueError(f"positions must lie in 0..{wpe.shape[0] - 1} (the context), got "
                         f"{positions.min().item()}..{positions.max().item()}")
    query = torch.arange(length, S)[:, None]  # (T, 1) cache position of each new token
    key = torch.arange(S)[None, :]  # (1, S)
    allowed = key <= query  # (T, S): causal
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"attention_mask must have shape (B, length + T) = {(B, S)}, got "
                             f"{tuple(attention_mask.shape)}")
        allowed = (allowed & attention_mask.bool()[:, None, :] | (key == query))[:, None]  # (B, 1, T, S)
    x = wte[idx] + wpe[positions]  # (B, T, C)
    for layer in range(n_layer):
        w = {name[len(f"transformer.h.{layer}."):]: value for name, value in weights.items()
             if name.startswith(f"transformer.h.{layer}.")}
        h = F.layer_norm(x, (C,), w["ln_1.weight"], w["ln_1.bias"], eps=1e-5)
        q, k, v = F.linear(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, hd)
        cache_k[layer, :, :, length:S] = k
        cache_v[layer, :, :, length:S] = v
        y = F.scaled_dot_product_attention(q, cache_k[layer, :, :, :S], cache_v[layer, :, :, :S], attn_mask=allowed)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), w["attn.c_proj.weight"], w["attn.c_proj.bias"])
        h = F.layer_norm(x, (C,), w["ln_2.weight"], w["ln_2.bias"], eps=1e-5)
        h = F.gelu(F.linear(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), weights["transformer.ln_f.weight"], weights["transformer.ln_f.bias"], eps=1e-5)
    return F.linear(x, weights["lm_head.weight"])  # (B, T, V)
    # END SOLUTION
