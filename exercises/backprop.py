"""Notebooks 03 and 03b: the layers of an MLP with their hand-written backward passes, and the optimisers that use
them.

Each layer has a forward (provided) and a backward (the exercises, except where marked provided). A backward takes
`dout` = dL/d(output), the gradient of the scalar loss L with respect to the layer's output, and returns dL/d(input)
for every input, each of the same shape as that input (the chain rule: dL/dx = dL/dout * dout/dx).

Every function works for float32 and float64 and returns arrays of its input's dtype. Notebook 04's NumPy GPT
imports the forward functions from here.
"""

from __future__ import annotations

import math

import numpy as np

from .attention import softmax

GELU_C = math.sqrt(2.0 / math.pi)  # the constant of GPT-2's tanh approximation of GELU
GELU_A = 0.044715


def _float_array(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}; convert it with "
                        f".astype(np.float32)")
    return x


def _check_linear(x, w) -> tuple[np.ndarray, np.ndarray]:
    x, w = _float_array(x, "x"), _float_array(w, "w")
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x of shape {x.shape} and w of shape {w.shape} do not fit: w must be (in, out) with "
                         f"in = x.shape[-1]")
    return x, w


def _check_dout(dout, shape: tuple[int, ...]) -> np.ndarray:
    dout = _float_array(dout, "dout")
    if dout.shape != shape:
        raise ValueError(f"dout has shape {dout.shape} but the layer's output has shape {shape}; dout must have "
                         f"the output's shape")
    return dout


def _check_layernorm(x, gamma) -> tuple[np.ndarray, np.ndarray]:
    x, gamma = _float_array(x, "x"), _float_array(gamma, "gamma")
    if x.ndim < 1 or gamma.shape != x.shape[-1:]:
        raise ValueError(f"gamma has shape {gamma.shape} but x has shape {x.shape}; gamma must have the shape of "
                         f"x's last axis, ({x.shape[-1] if x.ndim else '?'},)")
    return x, gamma


def _check_logits_targets(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = _float_array(logits, "logits"), np.asarray(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(f"logits must be (N, V) and targets (N,) with N >= 1; got {logits.shape} and "
                         f"{targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be integer class ids, got dtype {targets.dtype}")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got values from {targets.min()} to "
                         f"{targets.max()}")
    return logits, targets


# ---------------------------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------------------------

def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y = x @ w + b for x of shape (..., in), w (in, out), b (out,); returns (..., out)."""
    x, w = _check_linear(x, w)
    b = _float_array(b, "b")
    if b.shape != w.shape[1:]:
        raise ValueError(f"b has shape {b.shape} but w has shape {w.shape}; b must be (out,) = ({w.shape[1]},)")
    return x @ w + b


def linear_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of the linear layer y = x @ w + b.

    Args:
        dout: (..., out) float array, dL/dy.
        x: (..., in) float array, the layer's input (the same leading axes as dout, any number of them).
        w: (in, out) float array, the weight.

    Returns:
        (dx, dw, db): dx (..., in) = dL/dx, dw (in, out) = dL/dw, db (out,) = dL/db, each in the input's dtype.
        The gradients of w and b add up over every leading axis (batch, time, ...).

    Raises:
        ValueError: if the shapes do not fit (checked for you before your code runs).

    Hint: each output depends on one row of x and one column of w: the chain rule gives a matrix product for each
    gradient, and the bias gradient sums over every position.
    More: `llmcourse hint linear_backward`.
    """
    x, w = _check_linear(x, w)
    dout = _check_dout(dout, x.shape[:-1] + w.shape[1:])
    raise NotImplementedError("linear_backward: linear_backward is not implemented yet; write your code here")


# ---------------------------------------------------------------------------------------------------------------
# GELU (GPT-2's tanh approximation)
# ---------------------------------------------------------------------------------------------------------------

def gelu_forward(x: np.ndarray) -> np.ndarray:
    """GELU as in GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element-wise; same shape and dtype."""
    x = _float_array(x, "x")
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_A * x * x * x)))  # x * x * x: much faster than x**3


def gelu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of GELU (tanh approximation, see `gelu_forward`) with respect to its input.

    Args:
        dout: float array of x's shape, dL/dy for y = gelu_forward(x).
        x: float array of any shape, the layer's input.

    Returns:
        dx: array of x's shape and dtype, dL/dx = dout * gelu'(x) (element-wise).

    Raises:
        ValueError: if dout's shape differs from x's (checked for you before your code runs).

    Hint: GELU is x times a smooth step: differentiate the product, and the tanh inside it, by the chain rule.
    More: `llmcourse hint gelu_backward`.
    """
    x = _float_array(x, "x")
    dout = _check_dout(dout, x.shape)
    raise NotImplementedError("gelu_backward: gelu_backward is not implemented yet; write your code here")


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------------------------

def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis: gamma * (x - mean) / sqrt(var + eps) + beta, var biased (like torch).

    x is (..., D), gamma and beta are (D,); returns (..., D).
    """
    x, gamma = _check_layernorm(x, gamma)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = x.var(axis=-1, keepdims=True)  # (..., 1), divides by D
    return gamma * ((x - mean) / np.sqrt(var + eps)) + beta


def layernorm_backward(dout: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                       eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of LayerNorm over the last axis (see `layernorm_forward`).

    Args:
        dout: (..., D) float array, dL/dy.
        x: (..., D) float array, the layer's input.
        gamma: (D,) float array, the scale.
        eps: the constant added to the variance, as in the forward.

    Returns:
        (dx, dgamma, dbeta): dx (..., D), dgamma (D,), dbeta (D,), in the input's dtype. dgamma and dbeta add up
        over every leading axis.

    Raises:
        ValueError: if the shapes do not fit (checked for you before your code runs).

    Hint: every output of a row depends on every input of that row through the mean and the variance: follow those two
    paths back as well as the direct one.
    More: `llmcourse hint layernorm_backward`.
    """
    x, gamma = _check_layernorm(x, gamma)
    dout = _check_dout(dout, x.shape)
    raise NotImplementedError("layernorm_backward: layernorm_backward is not implemented yet; write your code here")


# ---------------------------------------------------------------------------------------------------------------
# Softmax cross-entropy
# ---------------------------------------------------------------------------------------------------------------

def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the N rows of -log softmax(logits)[n, targets[n]]; logits (N, V), integer targets (N,).

    Computed as logsumexp(logits[n]) - logits[n, targets[n]], with the row maximum subtracted first, so that large
    logits do not overflow.
    """
    logits, targets = _check_logits_targets(logits, targets)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, V), each row's max is 0
    logsumexp = np.log(np.exp(shifted).sum(axis=1))  # (N,)
    return float(np.mean(logsumexp - shifted[np.arange(len(targets)), targets]))


def cross_entropy_backward(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Gradient of `cross_entropy_forward(logits, targets)` (the mean loss) with respect to the logits.

    Args:
        logits: (N, V) float array, one row of scores per example.
        targets: (N,) integer array, the correct class of each row, in [0, V).

    Returns:
        dlogits: (N, V) array in the logits' dtype, dL/dlogits for L the mean cross-entropy over the N rows.

    Raises:
        ValueError / TypeError: for shapes, dtypes or target values that do not fit (checked for you before your
        code runs).

    Hint: differentiate log-sum-exp and the picked logit separately; the result is strikingly simple, and do not forget
    the mean over rows.
    More: `llmcourse hint cross_entropy_backward`.
    """
    logits, targets = _check_logits_targets(logits, targets)
    raise NotImplementedError("cross_entropy_backward: cross_entropy_backward is not implemented yet; write your code here")


# ---------------------------------------------------------------------------------------------------------------
# Optimisers: one update of one parameter array, in the form torch.optim uses
# ---------------------------------------------------------------------------------------------------------------

def _check_step(param, grad, velocity=None) -> tuple[np.ndarray, np.ndarray]:
    param, grad = _float_array(param, "param"), _float_array(grad, "grad")
    for name, value in (("grad", grad), ("velocity", velocity)):
        if value is not None and np.shape(value) != param.shape:
            raise ValueError(f"{name} has shape {np.shape(value)} but param has shape {param.shape}; an optimiser "
                             f"step needs them alike (one {name} entry per parameter entry)")
    return param, grad


def sgd_step(param: np.ndarray, grad: np.ndarray, *, lr: float) -> np.ndarray:
    """One step of plain (stochastic) gradient descent, exactly as `torch.optim.SGD(params, lr=lr)`.

    Args:
        param: float array of any shape, the parameter before the step.
        grad: float array of param's shape and dtype, dL/dparam (from one mini-batch, or the whole data set).
        lr: the learning rate, >= 0.

    Returns:
        the parameter after the step, a NEW array of param's shape and dtype. Do not modify param or grad in place
        (no `-=`): the caller still holds them.

    Raises:
        TypeError / ValueError: for a non-float array, shapes that differ or lr < 0 (checked for you before your
        code runs).

    Hint: walk downhill: the gradient points to where the loss grows fastest.
    More: `llmcourse hint sgd_step`.
    """
    param, grad = _check_step(param, grad)
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    raise NotImplementedError("sgd_step: sgd_step is not implemented yet; write your code here")


def momentum_step(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, *, lr: float,
                  momentum: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """One step of SGD with momentum, exactly as `torch.optim.SGD(params, lr=lr, momentum=momentum)`.

    Args:
        param: float array of any shape, the parameter before the step.
        grad: float array of param's shape and dtype, dL/dparam.
        velocity: float array of param's shape, the running sum of past gradients (zeros before the first step).
        lr: the learning rate, >= 0.
        momentum: how much of the old velocity is kept, in [0, 1) (0 gives plain SGD).

    Returns:
        (param, velocity) after the step, NEW arrays of param's shape and dtype. Do not modify the inputs in place.

    Raises:
        TypeError / ValueError: for a non-float array, shapes that differ, lr < 0 or momentum outside [0, 1)
        (checked for you before your code runs).

    Hint: the velocity is a decaying sum of the gradients so far; the parameter moves along the velocity, not the
    gradient.
    More: `llmcourse hint momentum_step`.
    """
    param, grad = _check_step(param, grad, velocity)
    velocity = _float_array(velocity, "velocity")
    if not lr >= 0 or not 0 <= momentum < 1:
        raise ValueError(f"need lr >= 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
    raise NotImplementedError("momentum_step: momentum_step is not implemented yet; write your code here")


def adam_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, *, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Adam step (AdamW when weight_decay > 0), exactly as `torch.optim.Adam` / `torch.optim.AdamW`.

    Args:
        param: float array of any shape, the parameter before the step.
        grad: float array of param's shape, dL/dparam.
        m: float array of param's shape, the running mean of the gradients (zeros before the first step).
        v: float array of param's shape, the running mean of the squared gradients (zeros before the first step).
        t: int >= 1, the number of this step (1 for the first step), used for the bias correction.
        lr: learning rate.
        beta1, beta2: decay rates of m and v.
        eps: added to sqrt(v_hat) in the denominator.
        weight_decay: AdamW's decoupled decay; param shrinks by lr * weight_decay * param before the Adam update
            (0 gives plain Adam).

    Returns:
        (param, m, v) after the step, each of param's shape and dtype.

    Raises:
        ValueError: if t < 1 (checked for you before your code runs).

    Hint: keep running averages of the gradient and of its square, correct their start-up bias, and step by their ratio.
    More: `llmcourse hint adam_step`.
    """
    if int(t) != t or t < 1:
        raise ValueError(f"t is the step number and starts at 1, got {t}")
    raise NotImplementedError("adam_step: adam_step is not implemented yet; write your code here")
