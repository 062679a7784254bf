"""From GPT-2 to Llama in NumPy (notebook 11): RMSNorm with its backward pass, the SwiGLU MLP, rotary position
embeddings (RoPE), general scaled dot-product attention and grouped-query attention.

Shapes follow `llmcourse.llama`: B batch, T query positions, S key positions, D = n_embd channels, d = head_dim,
n_head query heads and n_kv_head key/value heads. Weights are stored as PyTorch's `nn.Linear` stores them,
(out, in), so `x @ w.T` applies one. Every function computes in its input's dtype: float32 stays float32. The checks
of bad input are provided (they run before your code), so each exercise is only the computation itself.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .attention import softmax
from .backprop import _float_array


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0 (it keeps 1/sqrt(mean(x^2) + eps) finite), got {eps!r}")
    return float(eps)


def _check_rmsnorm(x, weight, eps) -> tuple[np.ndarray, np.ndarray, float]:
    x, weight = _float_array(x, "x"), _float_array(weight, "weight")
    if x.ndim < 1 or weight.shape != x.shape[-1:]:
        raise ValueError(f"weight has shape {weight.shape} but x has shape {x.shape}; weight must have the shape of "
                         f"x's last axis, ({x.shape[-1] if x.ndim else '?'},)")
    return x, weight.astype(x.dtype, copy=False), _check_eps(eps)


def _check_swiglu(x, w_gate, w_up, w_down) -> tuple[np.ndarray, ...]:
    x = _float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have shape (..., D), got a scalar")
    D = x.shape[-1]
    w_gate = _float_array(w_gate, "w_gate")
    hidden = w_gate.shape[0] if w_gate.ndim == 2 else -1
    arrays = [x]
    for name, w, shape in (("w_gate", w_gate, (hidden, D)), ("w_up", w_up, (hidden, D)),
                           ("w_down", w_down, (D, hidden))):
        w = _float_array(w, name)
        if hidden < 1 or w.shape != shape:
            raise ValueError(f"{name} has shape {w.shape}; for x (..., {D}) the weights must be w_gate (hidden, {D}), "
                             f"w_up (hidden, {D}) and w_down ({D}, hidden), stored (out, in) like nn.Linear")
        arrays.append(w.astype(x.dtype, copy=False))  # the weights follow the input's dtype
    return tuple(arrays)


def _check_rope(x, positions, theta) -> tuple[np.ndarray, np.ndarray, float]:
    x = _float_array(x, "x")
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"x must have shape (..., T, d) with an even head size d (features rotate in pairs), got "
                         f"shape {x.shape}")
    positions = np.asarray(positions)
    if positions.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers (one position per token), got dtype {positions.dtype}")
    try:
        fits = np.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"positions has shape {positions.shape}, which does not broadcast to x's {x.shape[:-1]} "
                         f"(one position per token: (T,), or (B, 1, T) for x (B, n_head, T, d))")
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions must be >= 0, got {positions.min()}")
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 1:
        raise ValueError(f"theta must be a number > 1 (the base of the rotation frequencies), got {theta!r}")
    return x, positions, float(theta)


def _check_mask(mask, target: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
    try:
        fits = np.broadcast_shapes(mask.shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"mask has shape {mask.shape}, which does not broadcast to (..., T_q, T_k) = {target}")
    return mask


def _same_float(*arrays: np.ndarray) -> list[np.ndarray]:
    wide = np.result_type(*arrays)  # mixed float32/float64: compute in the wider type
    return [a.astype(wide, copy=False) for a in arrays]


def _check_attention(q, k, v, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    q, k, v = _float_array(q, "q"), _float_array(k, "k"), _float_array(v, "v")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., positions, features), got shape {a.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension d, got q {q.shape} and k {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions T_k, got k {k.shape} and v {v.shape}")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"the leading (batch, head) dimensions of q {q.shape}, k {k.shape} and v {v.shape} do not "
                         "broadcast together") from None
    mask = _check_mask(mask, batch + (q.shape[-2], k.shape[-2]))
    return (*_same_float(q, k, v), mask)


def _check_gqa(q, k, v, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    q, k, v = _float_array(q, "q"), _float_array(k, "k"), _float_array(v, "v")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{name} must be 4-D, (B, heads, positions, features), got shape {a.shape}")
    (B, n_head, T, d), (n_kv_head, S) = q.shape, k.shape[1:3]
    if k.shape != (B, n_kv_head, S, d) or v.shape[:3] != (B, n_kv_head, S):
        raise ValueError(f"for q {q.shape} = (B, n_head, T, d), k must be (B, n_kv_head, S, d) and v "
                         f"(B, n_kv_head, S, d_v) with the same B, n_kv_head and S; got k {k.shape} and v {v.shape}")
    if n_kv_head == 0 or n_head % n_kv_head:
        raise ValueError(f"n_head = {n_head} query heads must be a multiple of n_kv_head = {n_kv_head} key/value "
                         "heads: each key/value head serves the same number of query heads")
    mask = _check_mask(mask, (B, n_head, T, S))
    return (*_same_float(q, k, v), mask)


# -- the exercises -----------------------------------------------------------------------------------------------

def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """RMSNorm over the last axis: weight * x / sqrt(mean(x^2) + eps), as `torch.nn.functional.rms_norm`.

    LayerNorm without the mean and the bias: each row is divided by its root mean square, then scaled per channel.

    Args:
        x: (..., D) float array (float32 or float64).
        weight: (D,) float array, the per-channel scale (exactly (D,): it is not broadcast from another shape).
        eps: a number >= 0 added to the mean square (Llama: 1e-6).

    Returns:
        Array of x's shape and dtype.

    Raises:
        TypeError / ValueError: for a non-float array, a weight that is not (D,) or eps < 0 (checked for you before
        your code runs).

    Hint: one number per row, the root of the mean of its squares (plus eps); divide by it, scale by weight.
    More: `llmcourse hint rmsnorm`.
    """
    x, weight, eps = _check_rmsnorm(x, weight, eps)
    raise NotImplementedError("rmsnorm: rmsnorm_forward is not implemented yet; write your code here")


def rmsnorm_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray,
                     eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of RMSNorm over the last axis (see `rmsnorm_forward`).

    Args:
        dout: (..., D) float array of x's shape, dL/dy.
        x: (..., D) float array, the layer's input.
        weight: (D,) float array, the scale.
        eps: the number added to the mean square, as in the forward.

    Returns:
        (dx, dweight): dx (..., D) = dL/dx and dweight (D,) = dL/dweight, in x's dtype. dweight adds up over every
        leading axis (batch, time, ...).

    Raises:
        TypeError / ValueError: if the shapes do not fit, dout's included (checked for you before your code runs).

    Hint: LayerNorm's backward with one path fewer: every output of a row depends on every input of that row through
    the root mean square only.
    More: `llmcourse hint rmsnorm`.
    """
    x, weight, eps = _check_rmsnorm(x, weight, eps)
    dout = _float_array(dout, "dout")
    if dout.shape != x.shape:
        raise ValueError(f"dout has shape {dout.shape} but x has shape {x.shape}; dout must have the output's shape")
    raise NotImplementedError("rmsnorm: rmsnorm_backward is not implemented yet; write your code here")


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """Llama's MLP: (silu(x w_gate^T) * (x w_up^T)) w_down^T, with silu(z) = z * sigmoid(z) = z / (1 + exp(-z)).

    Args:
        x: (..., D) float array.
        w_gate: (hidden, D) weight of the gate projection, stored (out, in) like nn.Linear.
        w_up: (hidden, D) weight of the up projection.
        w_down: (D, hidden) weight of the down projection.

    Returns:
        Array of x's shape and dtype (the weights are used in x's dtype). Finite for any finite input: silu of a
        large negative z is -0, not nan.

    Raises:
        TypeError / ValueError: for a non-float array or weights whose shapes do not fit (checked for you before
        your code runs).

    Hint: two projections of x side by side; one goes through SiLU and gates the other element by element; project
    back down.
    More: `llmcourse hint swiglu`.
    """
    x, w_gate, w_up, w_down = _check_swiglu(x, w_gate, w_up, w_down)
    raise NotImplementedError("swiglu: swiglu is not implemented yet; write your code here")


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Rotary position embedding of x, in Hugging Face's half-split layout (as `llmcourse.llama.rotate`).

    Feature i of the first half and feature i + d/2 form a pair (i = 0 .. d/2 - 1), rotated by the angle
    p / theta^(2i / d) of the token's position p:

        (x_i, x_{i + d/2}) -> (x_i cos - x_{i + d/2} sin,  x_{i + d/2} cos + x_i sin).

    Positions are given per token, so each row of a left-padded batch can count from its own first token.

    Args:
        x: (..., T, d) float array, queries or keys, d even.
        positions: integer array >= 0 broadcastable to x's (..., T) without enlarging it: (T,) for one sequence for
            every head, or (B, 1, T) per row for x (B, n_head, T, d).
        theta: the base of the frequencies, > 1 (Llama 2: 10000; Llama 3: 500000).

    Returns:
        Array of x's shape and dtype; every pair keeps its length (a rotation).

    Raises:
        TypeError / ValueError: for an odd d, non-integer or negative positions, positions that do not broadcast to
        (..., T), or theta <= 1 (checked for you before your code runs).

    Hint: one angle per (token, pair) from the position and the pair's frequency; then each pair turns like a 2-D
    vector.
    More: `llmcourse hint apply_rope`.
    """
    x, positions, theta = _check_rope(x, positions, theta)
    raise NotImplementedError("apply_rope: apply_rope is not implemented yet; write your code here")


def scaled_dot_product_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                                 mask: np.ndarray | None = None) -> np.ndarray:
    """softmax(q k^T / sqrt(d), masked) v, as `torch.nn.functional.scaled_dot_product_attention` with a boolean mask.

    Unlike chapter 02's causal_attention, nothing is masked unless `mask` says so, and the queries need not be as
    many as the keys: T_q new tokens attend to T_k cached ones (T_q = 1 while generating). A masked score is -inf
    before the softmax, so its weight is exactly 0. A query whose mask row allows no key at all gets the output 0
    (a vector of zeros, as PyTorch does), never nan.

    Args:
        q: (..., T_q, d) float array, the queries.
        k: (..., T_k, d) float array, the keys.
        v: (..., T_k, d_v) float array, the values.
        mask: optional boolean array broadcastable to (..., T_q, T_k), True where query i may attend to key j.

    Returns:
        Array of shape (..., T_q, d_v), in the inputs' dtype (the wider one when they differ).

    Raises:
        TypeError / ValueError: for non-float inputs, shapes that do not fit, a mask that is not boolean or does not
        broadcast to (..., T_q, T_k) (checked for you before your code runs).

    Hint: chapter 02's attention without the built-in causal mask; take care of the rows where every key is masked.
    More: `llmcourse hint sdpa`.
    """
    q, k, v, mask = _check_attention(q, k, v, mask)
    raise NotImplementedError("sdpa: scaled_dot_product_attention is not implemented yet; write your code here")


def gqa_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Grouped-query attention: n_head query heads share n_kv_head key/value heads, in groups of
    g = n_head // n_kv_head neighbours. Query head h attends over key/value head h // g, as
    `F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)` does.

    Args:
        q: (B, n_head, T, d) float array, the queries.
        k: (B, n_kv_head, S, d) float array, the keys (n_kv_head divides n_head; n_kv_head = n_head is plain
            multi-head attention, n_kv_head = 1 multi-query attention).
        v: (B, n_kv_head, S, d_v) float array, the values.
        mask: optional boolean array broadcastable to (B, n_head, T, S), True where a query may attend to a key.

    Returns:
        Array of shape (B, n_head, T, d_v), in the inputs' dtype. A query with no allowed key gets 0, as in
        `scaled_dot_product_attention`.

    Raises:
        TypeError / ValueError: for arrays that are not 4-D, batch sizes that differ, n_head not a multiple of
        n_kv_head, or a mask as in `scaled_dot_product_attention` (checked for you before your code runs).

    Hint: give every query head the key/value head of its group, then it is ordinary attention: use your
    `scaled_dot_product_attention`.
    More: `llmcourse hint gqa_attention`.
    """
    q, k, v, mask = _check_gqa(q, k, v, mask)
    raise NotImplementedError("gqa_attention: gqa_attention is not implemented yet; write your code here")
