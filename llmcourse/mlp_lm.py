"""A next-character MLP language model in NumPy (Bengio et al. 2003), built from notebook 03's layers.

    embed the last T characters -> concatenate -> Linear -> LayerNorm -> GELU -> Linear -> softmax

The model takes its layers as a `Layers` (by default the package's own, `llmcourse.numpy_layers`; notebook 03 passes
the learner's through `llmcourse.course.loader.load`), and the optimisers take their step function the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from llmcourse import numpy_layers
from llmcourse.ngram import BigramModel


@dataclass(frozen=True)
class Layers:
    """The functions the model is built from, named as in notebooks 01 and 03 (`tokens.embedding_*`, `backprop.*`)."""

    embedding_forward: Callable  # tokens.embedding_forward (notebook 01)
    embedding_backward: Callable  # tokens.embedding_backward
    linear_forward: Callable  # backprop.*
    linear_backward: Callable
    gelu_forward: Callable
    gelu_backward: Callable
    layernorm_forward: Callable
    layernorm_backward: Callable
    cross_entropy_forward: Callable
    cross_entropy_backward: Callable

    @classmethod
    def load(cls, get: Callable[[str], Callable]) -> "Layers":
        """Every function through `get("module.function")`, e.g. `llmcourse.course.loader.load` for the learner's
        code."""
        return cls(**{f.name: get(("tokens." if f.name.startswith("embedding") else "backprop.") + f.name)
                      for f in fields(cls)})

    @classmethod
    def default(cls) -> "Layers":
        """The package's own NumPy layers (`llmcourse.numpy_layers`)."""
        return cls(**{f.name: getattr(numpy_layers, f.name) for f in fields(cls)})


def one_blas_thread() -> threadpool_limits:
    """Run NumPy's matrix products on one thread: for matrices this small it is the fastest, and on a busy or
    shared CPU (CI, a classroom server) more BLAS threads than free cores made training here 10x slower."""
    return threadpool_limits(limits=1, user_api="blas")


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (context, next id) pair of a sequence: contexts (N - T, T) and targets (N - T,), T = context."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) <= context:
        raise ValueError(f"need a 1-D sequence longer than the context ({context}), got shape {ids.shape}")
    contexts = np.lib.stride_tricks.sliding_window_view(ids[:-1], context)  # (N - T, T), a view
    return contexts, ids[context:]


class MLPLanguageModel:
    """Predicts the next character from the previous `context` ones. Parameters live in `self.params` (a dict)."""

    def __init__(self, vocab_size: int, *, context: int = 8, embed_dim: int = 16, hidden: int = 256,
                 layers: Layers | None = None, seed: int = 0, dtype: type = np.float32):
        rng = np.random.default_rng(seed)
        self.vocab_size, self.context = vocab_size, context
        self.layers = layers or Layers.default()
        fan_in = context * embed_dim
        params = {
            "embedding": rng.normal(size=(vocab_size, embed_dim)),  # (V, d)
            "w1": rng.normal(size=(fan_in, hidden)) / np.sqrt(fan_in),  # (T*d, H)
            "b1": np.zeros(hidden),
            "gamma": np.ones(hidden),
            "beta": np.zeros(hidden),
            # small output weights: the first predictions are close to uniform, loss ~ log(V)
            "w2": rng.normal(size=(hidden, vocab_size)) * 0.1 / np.sqrt(hidden),  # (H, V)
            "b2": np.zeros(vocab_size),
        }
        self.params = {name: value.astype(dtype) for name, value in params.items()}

    def num_parameters(self) -> int:
        return sum(p.size for p in self.params.values())

    def _forward(self, contexts: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        L, p = self.layers, self.params
        contexts = np.asarray(contexts)
        if contexts.ndim != 2 or contexts.shape[1] != self.context:
            raise ValueError(f"contexts must be (B, {self.context}) token ids, got shape {contexts.shape}")
        e = L.embedding_forward(contexts, p["embedding"])  # (B, T, d)
        x = e.reshape(len(contexts), -1)  # (B, T*d)
        h = L.linear_forward(x, p["w1"], p["b1"])  # (B, H)
        n = L.layernorm_forward(h, p["gamma"], p["beta"])  # (B, H)
        a = L.gelu_forward(n)  # (B, H)
        logits = L.linear_forward(a, p["w2"], p["b2"])  # (B, V)
        return logits, {"contexts": contexts, "x": x, "h": h, "n": n, "a": a}

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Scores of the next token for each row of contexts (B, T): (B, V)."""
        return self._forward(contexts)[0]

    def loss_and_grads(self, contexts: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy on a batch and its gradient for every parameter: backprop, layer by layer."""
        L, p = self.layers, self.params
        logits, c = self._forward(contexts)
        loss = L.cross_entropy_forward(logits, targets)
        g = {}
        dlogits = L.cross_entropy_backward(logits, targets)  # (B, V)
        da, g["w2"], g["b2"] = L.linear_backward(dlogits, c["a"], p["w2"])  # (B, H)
        dn = L.gelu_backward(da, c["n"])  # (B, H)
        dh, g["gamma"], g["beta"] = L.layernorm_backward(dn, c["h"], p["gamma"])  # (B, H)
        dx, g["w1"], g["b1"] = L.linear_backward(dh, c["x"], p["w1"])  # (B, T*d)
        de = dx.reshape(*c["contexts"].shape, -1)  # (B, T, d)
        g["embedding"] = L.embedding_backward(c["contexts"], de, self.vocab_size)  # (V, d)
        return loss, g

    def mean_loss(self, ids: np.ndarray, batch_size: int = 8192) -> float:
        """Mean cross-entropy (nats per character) of predicting ids[T:] from the T characters before each."""
        contexts, targets = windows(ids, self.context)
        total = 0.0
        with one_blas_thread():
            for start in range(0, len(targets), batch_size):
                rows = slice(start, start + batch_size)
                loss = self.layers.cross_entropy_forward(self.logits(contexts[rows]), targets[rows])
                total += loss * len(targets[rows])
        return total / len(targets)

    def sample(self, prompt: list[int], n: int, rng: np.random.Generator) -> list[int]:
        """Continue `prompt` (at least `context` ids) by n ids, each drawn from the softmax of the logits."""
        if len(prompt) < self.context:
            raise ValueError(f"the prompt needs at least {self.context} ids, got {len(prompt)}")
        out = list(prompt)
        for _ in range(n):
            probs = numpy_layers.softmax(self.logits(np.array([out[-self.context:]])).astype(np.float64))[0]  # (V,)
            out.append(int(rng.choice(self.vocab_size, p=probs)))
        return out


def sgd_step(param: np.ndarray, grad: np.ndarray, *, lr: float) -> np.ndarray:
    """param - lr * grad, a new array (torch.optim.SGD)."""
    return param - lr * grad


def momentum_step(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, *, lr: float,
                  momentum: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """New (param, velocity): velocity <- momentum velocity + grad, param <- param - lr velocity (torch.optim.SGD
    with momentum)."""
    new_velocity = grad + momentum * velocity
    return param - lr * new_velocity, new_velocity


def adam_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, *, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New (param, m, v) after step t >= 1 of Adam, AdamW with weight_decay > 0 (torch.optim.Adam / AdamW): param
    decays by lr * weight_decay, then moves by lr * m_hat / (sqrt(v_hat) + eps), the moments bias-corrected."""
    param = param * (1.0 - lr * weight_decay)
    m = (1.0 - beta1) * grad + beta1 * m
    v = (1.0 - beta2) * np.square(grad) + beta2 * v
    return param - lr * (m / (1.0 - beta1**t)) / (np.sqrt(v / (1.0 - beta2**t)) + eps), m, v


class SGD:
    """Plain SGD over a dict of parameters, with the step function `step(param, grad, lr=...)` (default
    `sgd_step`)."""

    def __init__(self, lr: float, step: Callable | None = None):
        self.lr, self.step = lr, step or sgd_step

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            params[name] = self.step(params[name], grad, lr=self.lr)


class Momentum:
    """SGD with momentum; `step(param, grad, velocity, lr=..., momentum=...) -> (param, velocity)` (default
    `momentum_step`)."""

    def __init__(self, lr: float, momentum: float = 0.9, step: Callable | None = None):
        self.lr, self.momentum, self.step = lr, momentum, step or momentum_step
        self.velocity: dict[str, np.ndarray] = {}

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            velocity = self.velocity.get(name, np.zeros_like(grad))
            params[name], self.velocity[name] = self.step(params[name], grad, velocity, lr=self.lr,
                                                          momentum=self.momentum)


class Adam:
    """Adam, or AdamW with weight_decay > 0; `step(param, grad, m, v, t, lr=..., weight_decay=...) -> (param, m, v)`
    (default `adam_step`)."""

    def __init__(self, lr: float, weight_decay: float = 0.0, step: Callable | None = None):
        self.lr, self.weight_decay, self.step = lr, weight_decay, step or adam_step
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, grad in grads.items():
            m, v = self.m.get(name, np.zeros_like(grad)), self.v.get(name, np.zeros_like(grad))
            params[name], self.m[name], self.v[name] = self.step(params[name], grad, m, v, self.t, lr=self.lr,
                                                                 weight_decay=self.weight_decay)


def quadratic_path(optimizer, scales, start, steps: int, tol: float | None = None) -> np.ndarray:
    """The points an optimiser visits on f(p) = sum_i scales_i p_i^2 / 2 (gradient scales * p, minimum at 0), from
    `start`: an array (k + 1, dim), the start first. It stops after `steps` updates, once every |p_i| < tol, or once
    some |p_i| > 1e6 (diverged)."""
    scales = np.asarray(scales, dtype=np.float64)
    params = {"p": np.asarray(start, dtype=np.float64)}
    path = [params["p"]]
    for _ in range(steps):
        optimizer.update(params, {"p": scales * params["p"]})
        path.append(params["p"])
        size = np.abs(params["p"]).max()
        if (tol is not None and size < tol) or not size <= 1e6:
            break
    return np.array(path)


def fewest_steps(make_optimizer: Callable[[float], object], lrs, scales, start, *, tol: float,
                 max_steps: int) -> tuple[float, float]:
    """(steps, lr): the fewest updates that bring every |p_i| below tol on `quadratic_path`, over the learning
    rates `lrs` (make_optimizer(lr) makes a fresh optimiser); steps is inf if no lr gets there in max_steps."""
    best = (np.inf, float("nan"))
    for lr in lrs:
        path = quadratic_path(make_optimizer(lr), scales, start, max_steps, tol=tol)
        if np.abs(path[-1]).max() < tol and len(path) - 1 < best[0]:
            best = (len(path) - 1, float(lr))
    return best


@dataclass
class History:
    """Training loss per step and held-out loss at a few steps, in nats per character."""

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def train(model: MLPLanguageModel, optimizer, train_ids: np.ndarray, *, steps: int, batch_size: int | None = 128,
          val_ids: np.ndarray | None = None, evals: int = 5, seed: int = 0, desc: str = "training") -> History:
    """`steps` updates, each on `batch_size` windows of train_ids drawn at random (mini-batch SGD) or, with
    batch_size=None, on every window (full-batch gradient descent); a progress bar; held-out loss `evals` times."""
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1 (or None for the full batch), got {batch_size!r}")
    rng = np.random.default_rng(seed)
    contexts, targets = windows(train_ids, model.context)
    history = History()
    eval_at = set(np.linspace(0, steps, evals + 1, dtype=int)[1:]) if val_ids is not None else set()
    bar = tqdm(range(1, steps + 1), desc=desc, mininterval=0.5)
    with one_blas_thread():
        for step in bar:
            rows = slice(None) if batch_size is None else rng.integers(0, len(targets), size=batch_size)
            loss, grads = model.loss_and_grads(contexts[rows], targets[rows])
            optimizer.update(model.params, grads)
            history.train_loss.append(loss)
            if step in eval_at:
                history.val_steps.append(step)
                history.val_loss.append(model.mean_loss(val_ids))
                bar.set_postfix(val_loss=f"{history.val_loss[-1]:.3f}")
    return history


def bigram_baseline(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, context: int) -> float:
    """Held-out perplexity of notebook 01's `BigramModel` on the MLP's targets, val_ids[context:]."""
    return BigramModel.fit(train_ids, vocab_size).perplexity(np.asarray(val_ids)[context - 1:])


def plot_loss_curves(histories: dict[str, History], baseline_loss: float | None = None, window: int = 50):
    """Training loss (moving average over `window` steps) and held-out loss per optimiser; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (name, h), color in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        losses = np.asarray(h.train_loss)
        w = min(window, len(losses))
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")  # (steps - w + 1,)
        ax.plot(np.arange(w, len(losses) + 1), smooth, color=color, label=f"{name} (train, mean of {w} steps)")
        if h.val_steps:
            ax.plot(h.val_steps, h.val_loss, "o", color=color, label=f"{name} (held out)")
    if baseline_loss is not None:
        ax.axhline(baseline_loss, color="gray", linestyle="--", label="bigram baseline (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
