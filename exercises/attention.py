"""Self-attention in NumPy (notebook 02): stable softmax, causal attention, multi-head split/merge and forward.

Shapes follow the GPT-2 code: B batch, T positions (tokens), C = n_embd channels, H = n_head heads, D = C // H
channels per head. The checks of bad input are provided (they run before your code), so each exercise is only the
computation itself.
"""

from __future__ import annotations

import math

import numpy as np


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _float_array(x, name: str) -> np.ndarray:
    """`x` as a float array: float32/float64 kept, integers and bools converted to float64."""
    arr = np.asarray(x)
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    return arr


def _check_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimension(s)")
    return int(axis) % ndim


def _check_attention_inputs(q, k, v, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    q, k, v = _float_array(q, "q"), _float_array(k, "k"), _float_array(v, "v")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, d), got shape {a.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension d, got q {q.shape} and k {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions T, got k {k.shape} and v {v.shape}")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs as many queries as keys, got q {q.shape} and k {k.shape}")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"the leading (batch) dimensions of q {q.shape}, k {k.shape} and v {v.shape} do not "
                         "broadcast together") from None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
        target = batch + (q.shape[-2],) * 2  # (..., T, T)
        try:
            fits = np.broadcast_shapes(mask.shape, target) == target
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask has shape {mask.shape}, which does not broadcast to (..., T, T) = {target}")
    if len({q.dtype, k.dtype, v.dtype}) > 1:  # mixed float32/float64: compute in the wider type
        wide = np.result_type(q, k, v)
        q, k, v = q.astype(wide), k.astype(wide), v.astype(wide)
    return q, k, v, mask


def _check_heads(x, n_head) -> np.ndarray:
    if not isinstance(n_head, (int, np.integer)) or isinstance(n_head, bool) or n_head < 1:
        raise ValueError(f"n_head must be a positive int, got {n_head!r}")
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, T, C), got shape {x.shape}")
    if x.shape[-1] % n_head:
        raise ValueError(f"n_embd (C = {x.shape[-1]}) is not divisible by n_head = {n_head}")
    return x


def _check_multihead(x, w_qkv, b_qkv, w_proj, b_proj, n_head) -> tuple[np.ndarray, ...]:
    x = _check_heads(_float_array(x, "x"), n_head)
    C = x.shape[-1]
    arrays = [x]
    for name, a, shape in (("w_qkv", w_qkv, (C, 3 * C)), ("b_qkv", b_qkv, (3 * C,)),
                           ("w_proj", w_proj, (C, C)), ("b_proj", b_proj, (C,))):
        a = _float_array(a, name)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} for n_embd C = {C}, got {a.shape}")
        arrays.append(a.astype(x.dtype, copy=False))  # the weights follow the input's dtype
    return tuple(arrays)


def causal_mask(T: int) -> np.ndarray:
    """The (T, T) boolean causal mask: True at [i, j] when query i may attend to key j, that is j <= i."""
    return np.tril(np.ones((T, T), dtype=bool))


# -- the exercises -----------------------------------------------------------------------------------------------

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of `x` along `axis`: exp(x_i) / sum_j exp(x_j).

    exp overflows for inputs above ~88.7 in float32 (~709.8 in float64). Softmax does not change when the same
    number is subtracted from every entry, so subtract the maximum along `axis` first: the largest exponent is then
    exp(0) = 1 and nothing overflows. An entry of -inf gets probability exactly 0.

    Args:
        x: float array of any shape (float32 or float64; integers arrive here as float64).
        axis: the axis to normalise over (default: the last one).

    Returns:
        Array of the same shape and dtype as `x`, non-negative, summing to 1 along `axis`.

    Raises:
        ValueError: if `axis` is out of range (checked for you before your code runs).

    Hint: exp(x - c) / sum(exp(x - c)) is the same for every constant c: choose the c that keeps exp from overflowing.
    More: `llmcourse hint softmax`.
    """
    x = _float_array(x, "x")
    axis = _check_axis(axis, x.ndim)
    raise NotImplementedError("softmax: softmax is not implemented yet; write your code here")


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Causal scaled dot-product attention: softmax(q k^T / sqrt(d) + causal mask) v.

    Query i may attend to key j only when j <= i (no looking at the future). Masked scores are set to -inf
    before the softmax, so their weights are exactly 0. If `mask` is given, a query may attend to key j only where
    both the causal mask and `mask` allow it. A query that may attend to nothing gets the output 0 (as in PyTorch's
    `scaled_dot_product_attention`), never NaN.

    Args:
        q: queries, float array of shape (..., T, d).
        k: keys, shape (..., T, d).
        v: values, shape (..., T, d_v) (usually d_v = d).
        mask: optional boolean array broadcastable to (..., T, T); True where query i may attend to key j.

    Returns:
        Array of shape (..., T, d_v), dtype of the inputs.

    Raises:
        ValueError / TypeError: for mismatched shapes or a mask that is not boolean or does not broadcast to
            (..., T, T) (checked for you before your code runs).

    Hint: scores from queries against keys, scaled; hide the future; softmax; weight the values.
    More: `llmcourse hint causal_attention`.
    """
    q, k, v, mask = _check_attention_inputs(q, k, v, mask)
    raise NotImplementedError("causal_attention: causal_attention is not implemented yet; write your code here")


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """Split the channels of `x` into `n_head` heads: (B, T, C) -> (B, n_head, T, C // n_head).

    Head h gets channels h * D to (h + 1) * D - 1 (D = C // n_head), the layout of GPT-2 and PyTorch:
    `split_heads(x, n_head)[b, h, t] == x[b, t, h * D:(h + 1) * D]`.

    Args:
        x: array of shape (B, T, C), any dtype.
        n_head: number of heads; must divide C.

    Returns:
        Array of shape (B, n_head, T, C // n_head), same dtype as `x`.

    Raises:
        ValueError: if `x` is not 3-D or C is not divisible by n_head (checked for you before your code runs).

    Hint: the last axis holds n_head blocks side by side: give each block an axis of its own, then move the head axis
    before time.
    More: `llmcourse hint multihead_split_merge`.
    """
    x = _check_heads(x, n_head)
    raise NotImplementedError("multihead_split_merge: split_heads is not implemented yet; write your code here")


def merge_heads(x: np.ndarray) -> np.ndarray:
    """Undo `split_heads`: (B, n_head, T, D) -> (B, T, n_head * D), heads side by side along the channels.

    Args:
        x: array of shape (B, n_head, T, D), any dtype.

    Returns:
        Array of shape (B, T, n_head * D), same dtype as `x`; `merge_heads(split_heads(x, n)) == x`.

    Raises:
        ValueError: if `x` is not 4-D (checked for you before your code runs).

    Hint: undo split_heads, in the reverse order of its steps.
    More: `llmcourse hint multihead_split_merge`.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, n_head, T, D), got shape {x.shape}")
    raise NotImplementedError("multihead_split_merge: merge_heads is not implemented yet; write your code here")


def multihead_attention(x: np.ndarray, w_qkv: np.ndarray, b_qkv: np.ndarray, w_proj: np.ndarray,
                        b_proj: np.ndarray, n_head: int) -> np.ndarray:
    """Causal multi-head self-attention forward, GPT-2 layout (weights stored as (in, out), `x @ w + b`).

        qkv = x @ w_qkv + b_qkv          # (B, T, 3C); q, k, v are its three C-wide blocks, in that order
        q, k, v -> split_heads           # (B, H, T, D) each
        y = causal_attention(q, k, v)    # (B, H, T, D)
        out = merge_heads(y) @ w_proj + b_proj   # (B, T, C)

    Args:
        x: input, float array of shape (B, T, C).
        w_qkv: (C, 3C) weights of the query, key and value projections side by side.
        b_qkv: (3C,) their biases.
        w_proj: (C, C) output projection.
        b_proj: (C,) its bias.
        n_head: number of heads; must divide C.

    Returns:
        Array of shape (B, T, C), dtype of `x` (float32 stays float32).

    Raises:
        ValueError: if a shape does not fit or C is not divisible by n_head (checked for you before your code runs).

    Hint: one projection to queries, keys and values, attention per head, heads back together, one output projection.
    More: `llmcourse hint multihead_attention`.
    """
    x, w_qkv, b_qkv, w_proj, b_proj = _check_multihead(x, w_qkv, b_qkv, w_proj, b_proj, n_head)
    raise NotImplementedError("multihead_attention: multihead_attention is not implemented yet; write your code here")
