"""Checking hand-written gradients: against central differences (float64) and against `torch.autograd`.

    errors = check_gradient(lambda x, w, b: np.sum(linear_forward(x, w, b) * dout),
                            {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})

A scalar loss L(inputs) and its analytic gradients go in; the largest relative error comes out. In float64 with
h = 1e-5 a correct backward gives about 1e-9 or less (truncation error ~h^2, rounding ~1e-16/h), a wrong one
anything from 1e-3 up; the course accepts < 1e-7 (< 1e-5 next to a kink such as ReLU's).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

TOLERANCE = 1e-7  # float64 central differences, smooth functions (COURSE.md section 4)


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """dF/dx by central differences, (f(x + h e_i) - f(x - h e_i)) / 2h for every entry i, in float64.

    `f` maps an array of x's shape to a scalar; it is called 2 * x.size times, on float64 copies of x.
    """
    x = np.array(x, dtype=np.float64)  # a copy: f never sees the caller's array
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views into x and grad
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = float(f(x))
        flat[i] = old - h
        down = float(f(x))
        flat[i] = old
        gflat[i] = (up - down) / (2.0 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max |a|, max |b|): 0 for equal arrays, ~1e-16 for float64 rounding, 1 or more for unrelated.

    Taken over the whole array (not entry by entry), so a tiny entry next to large ones does not blow it up.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    return 0.0 if scale == 0.0 else float(np.max(np.abs(a - b)) / scale)


def gradient_errors(f: Callable[..., float], inputs: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                    h: float = 1e-5) -> dict[str, float]:
    """Relative error of each analytic gradient `grads[name]` against central differences of f(**inputs)."""
    missing = set(grads) - set(inputs)
    if missing:
        raise ValueError(f"gradients given for {sorted(missing)}, which are not among the inputs {sorted(inputs)}")
    inputs64 = {name: np.asarray(value, dtype=np.float64) if np.issubdtype(np.asarray(value).dtype, np.floating)
                else value for name, value in inputs.items()}  # integer inputs (class ids) stay as they are
    errors = {}
    for name, grad in grads.items():
        numeric = numerical_gradient(lambda value: f(**{**inputs64, name: value}), inputs64[name], h)
        errors[name] = relative_error(grad, numeric)
    return errors


def check_gradient(f: Callable[..., float], inputs: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                   h: float = 1e-5) -> float:
    """The largest relative error over `grads` (see `gradient_errors`); below ~1e-7 in float64 when correct."""
    return max(gradient_errors(f, inputs, grads, h).values())


def _torch_grads(loss: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    loss.backward()
    return {name: t.grad.numpy() for name, t in tensors.items()}


def layer_checks(layers, seed: int = 0) -> list[dict[str, object]]:
    """Check each layer of notebook 03 in float64, on small random inputs, three ways.

    `layers` is an `llmcourse.mlp_lm.Layers` (the package's own, or the learner's through the loader). Returns
    one row per layer: the largest relative error of the backward against central differences, of the forward
    against PyTorch, and of the backward against `torch.autograd`.
    """
    rng = np.random.default_rng(seed)
    rows = []

    def row(layer, forward_np, forward_torch, inputs, backward_np):
        # Project the output on a fixed random direction: L = sum(y * dout), so dL/dy = dout.
        y = np.asarray(forward_np(**inputs))
        dout = rng.normal(size=y.shape) if y.ndim else None
        loss = (lambda **kw: float(np.sum(forward_np(**kw) * dout))) if y.ndim else forward_np
        grads = backward_np(dout, **inputs)
        tensors = {name: torch.tensor(value, requires_grad=True) for name, value in inputs.items()
                   if np.issubdtype(value.dtype, np.floating)}
        y_torch = forward_torch(**{**inputs, **tensors})
        torch_grads = _torch_grads((y_torch * torch.tensor(dout)).sum() if y.ndim else y_torch, tensors)
        rows.append({
            "layer": layer,
            "vs central differences": check_gradient(loss, inputs, grads),
            "forward vs torch": relative_error(y, y_torch.detach().numpy()),
            "backward vs torch.autograd": max(relative_error(grads[n], torch_grads[n]) for n in grads),
        })

    x = rng.normal(size=(4, 6))
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    row("Linear", layers.linear_forward, lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b},
        lambda dout, x, w, b: dict(zip("xwb", layers.linear_backward(dout, x, w))))
    x = rng.normal(scale=2.0, size=(4, 6))
    row("GELU", layers.gelu_forward, lambda x: F.gelu(x, approximate="tanh"), {"x": x},
        lambda dout, x: {"x": layers.gelu_backward(dout, x)})
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    row("LayerNorm", layers.layernorm_forward,
        lambda x, gamma, beta: F.layer_norm(x, (6,), gamma, beta, eps=1e-5),
        {"x": x, "gamma": gamma, "beta": beta},
        lambda dout, x, gamma, beta: dict(zip(("x", "gamma", "beta"), layers.layernorm_backward(dout, x, gamma))))
    logits, targets = rng.normal(scale=2.0, size=(5, 7)), rng.integers(0, 7, size=5)
    row("softmax cross-entropy", layers.cross_entropy_forward,
        lambda logits, targets: F.cross_entropy(logits, torch.tensor(targets)), {"logits": logits, "targets": targets},
        lambda dout, logits, targets: {"logits": layers.cross_entropy_backward(logits, targets)})
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    """A plain-text table of `layer_checks` rows, numbers in scientific notation."""
    columns = list(rows[0])
    cells = [[f"{r[c]:.1e}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(columns, widths))]
    lines += ["  ".join(v.ljust(wd) for v, wd in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def optimizer_errors(optimizer, make_torch: Callable[[list[torch.Tensor]], torch.optim.Optimizer], *,
                     steps: int = 5, seed: int = 0) -> list[float]:
    """Relative error, after each of `steps` updates, between `optimizer` (an object with `update(params, grads)`
    on dicts of arrays, like `llmcourse.mlp_lm.SGD`) and a torch optimiser, `make_torch(tensors)`, fed the same
    random float64 gradients from the same start."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}
    torch_optimizer = make_torch(list(tensors.values()))
    errors = []
    for _ in range(steps):
        grads = {name: rng.normal(size=value.shape) for name, value in params.items()}
        optimizer.update(params, grads)
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        torch_optimizer.step()
        errors.append(max(relative_error(params[name], tensors[name].detach().numpy()) for name in params))
    return errors
