"""The NumPy layers of the package's NumPy models (the MLP language model, the attention explorer): softmax, and the
forward and backward passes of embedding, Linear, GELU, LayerNorm and softmax cross-entropy.

Each function has the signature of its counterpart in notebooks 01-03 (so `llmcourse.mlp_lm.Layers` can hold either)
and computes in the input's dtype. Inputs are not checked: the models that call these build them.
"""

from __future__ import annotations

import math

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)  # GPT-2's tanh approximation of GELU
GELU_A = 0.044715


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, the maximum subtracted first so that nothing overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows of weight (V, D) picked by integer ids (S): (S + (D,))."""
    return weight[np.asarray(ids, dtype=np.int64)]


def embedding_backward(ids: np.ndarray, grad_out: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, D) gradient of the table: grad_out (S + (D,)) summed into the rows that ids (S) picked."""
    grad = np.zeros((vocab_size, grad_out.shape[-1]), grad_out.dtype)
    np.add.at(grad, np.asarray(ids, dtype=np.int64).reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]))
    return grad


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (..., in) @ w (in, out) + b (out,): (..., out)."""
    return x @ w + b


def linear_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx (..., in), dw (in, out), db (out,)) of y = x @ w + b, given dout = dL/dy (..., out)."""
    rows_x, rows_dout = x.reshape(-1, w.shape[0]), dout.reshape(-1, w.shape[1])  # (N, in), (N, out)
    return dout @ w.T, rows_x.T @ rows_dout, rows_dout.sum(axis=0)


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise."""
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_A * x * x * x)))


def gelu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout * gelu'(x): with t = tanh(u), u = c (x + a x^3), gelu' = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2."""
    t = np.tanh(GELU_C * (x + GELU_A * x * x * x))
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x))


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis (biased variance, as torch)."""
    return gamma * ((x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)) + beta


def layernorm_backward(dout: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                       eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx (..., D), dgamma (D,), dbeta (D,)) of LayerNorm over the last axis:
    dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dout * gamma, xhat the normalised x."""
    rstd = np.reciprocal(np.sqrt(x.var(axis=-1, keepdims=True) + eps))  # (..., 1)
    xhat = (x - x.mean(axis=-1, keepdims=True)) * rstd  # (..., D)
    leading = tuple(range(x.ndim - 1))
    g = dout * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dout * xhat).sum(axis=leading), dout.sum(axis=leading)


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the rows of logits (N, V) of logsumexp(row) - row[target], targets (N,)."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, V)
    logsumexp = np.log(np.exp(shifted).sum(axis=1))  # (N,)
    return float(np.mean(logsumexp - shifted[np.arange(len(targets)), targets]))


def cross_entropy_backward(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, V) gradient of the mean cross-entropy: (softmax(logits) - onehot(targets)) / N."""
    grad = softmax(logits).astype(logits.dtype, copy=True)  # (N, V)
    grad[np.arange(len(targets)), targets] -= 1.0
    return grad / len(targets)
