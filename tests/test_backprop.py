"""Notebook 03's NumPy layers and optimisers against PyTorch, forward and backward, and the MLP language model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.course.loader import reference
from llmcourse.gradcheck import TOLERANCE, check_gradient
from llmcourse.mlp_lm import (SGD, Adam, Layers, MLPLanguageModel, Momentum, bigram_baseline, fewest_steps,
                              quadratic_path, train, windows)

bp = Layers.load(reference)  # the reference layers of solutions/backprop.py
sgd_step, momentum_step, adam_step = (reference(f"backprop.{n}") for n in ("sgd_step", "momentum_step", "adam_step"))

# float64: NumPy and PyTorch differ only in the order of operations (~1e-16); 1e-7 is COURSE.md's float64 rtol,
# atol 1e-12 for entries ~0 by cancellation. float32: PyTorch's own float32 defaults.
TOL = {np.float64: {"rtol": 1e-7, "atol": 1e-12}, np.float32: {"rtol": 1.3e-6, "atol": 1e-5}}
DTYPES = [np.float64, np.float32]
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6))  # (B, T, D)


def torch_pass(forward, inputs: dict, dout=None):
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = forward(**tensors)
    (out if dout is None else (out * torch.tensor(dout)).sum()).backward()
    return out.detach().numpy(), {k: t.grad.numpy() for k, t in tensors.items()}


def close(actual, expected, dtype):
    assert np.asarray(actual).dtype == dtype, f"dtype {np.asarray(actual).dtype}, expected {dtype}"
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


# -- every layer, forward and backward, against torch ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=15)
@given(shape=shapes, out=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_linear_matches_torch(dtype, shape, out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = (rng.normal(size=s).astype(dtype) for s in (shape, (shape[-1], out), (out,)))
    dout = rng.normal(size=shape[:-1] + (out,)).astype(dtype)
    y, grads = torch_pass(lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b}, dout)
    close(bp.linear_forward(x, w, b), y, dtype)
    for got, name in zip(bp.linear_backward(dout, x, w), "xwb"):
        close(got, grads[name], dtype)


def test_linear_on_a_single_vector():
    rng = np.random.default_rng(0)
    x, w, b, dout = rng.normal(size=3), rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=2)
    y, grads = torch_pass(lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b}, dout)
    close(bp.linear_forward(x, w, b), y, np.float64)
    for got, name in zip(bp.linear_backward(dout, x, w), "xwb"):
        close(got, grads[name], np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=15)
@given(shape=shapes, scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**16))
def test_gelu_matches_torch(dtype, shape, scale, seed):
    rng = np.random.default_rng(seed)
    x, dout = (rng.normal(scale=scale, size=shape).astype(dtype) for _ in range(2))
    y, grads = torch_pass(lambda x: F.gelu(x, approximate="tanh"), {"x": x}, dout)
    close(bp.gelu_forward(x), y, dtype)
    if dtype == np.float64:
        close(bp.gelu_backward(dout, x), grads["x"], dtype)
        return
    # float32: where tanh saturates (|x| >~ 4), 1 - tanh^2 and 1 + tanh lose everything but ~eps of absolute
    # precision, and the derivative multiplies that by 0.5 x C (1 + 3 A x^2) dout: NumPy and PyTorch then round to
    # different values (one may give 0 where the truth is 2e-6). So compare with the float64 truth, allowing that
    # rounding explicitly on top of PyTorch's float32 tolerances.
    _, exact = torch_pass(lambda x: F.gelu(x, approximate="tanh"), {"x": x.astype(np.float64)},
                          dout.astype(np.float64))
    x64, d64 = x.astype(np.float64), np.abs(dout.astype(np.float64))
    cancellation = 4 * np.finfo(np.float32).eps * d64 * (1 + np.abs(x64) * 0.8 * (1 + 0.134 * x64 ** 2))
    got = bp.gelu_backward(dout, x)
    assert got.dtype == np.float32, f"dtype {got.dtype}, expected float32"
    error = np.abs(got.astype(np.float64) - exact["x"])
    bound = 1.3e-6 * np.abs(exact["x"]) + 1e-5 + cancellation
    assert np.all(error <= bound), f"float32 GELU backward off by {error.max():.2e} (bound {bound.min():.2e})"


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=15)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_layernorm_matches_torch(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    # D >= 4: with D = 2 the exact dx is ~0 (xhat = +-1 whatever x is) and float32 rounding is all that is left;
    # with D = 1 every row is constant (covered below)
    D = shape[-1] + 3
    x = rng.normal(loc=2.0, scale=3.0, size=shape[:-1] + (D,)).astype(dtype)
    gamma, beta = rng.normal(size=D).astype(dtype), rng.normal(size=D).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    y, grads = torch_pass(lambda x, gamma, beta: F.layer_norm(x, (D,), gamma, beta, eps=1e-5),
                          {"x": x, "gamma": gamma, "beta": beta}, dout)
    close(bp.layernorm_forward(x, gamma, beta), y, dtype)
    for got, name in zip(bp.layernorm_backward(dout, x, gamma), ("x", "gamma", "beta")):
        close(got, grads[name], dtype)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_constant_rows_and_eps(eps):
    x = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 5.0]])
    gamma, beta, dout = np.array([1.0, 2.0, -1.0]), np.array([0.5, 0.0, 0.1]), np.array([[1.0, -2, 3], [0, 1, 2]])
    y, grads = torch_pass(lambda x, gamma, beta: F.layer_norm(x, (3,), gamma, beta, eps=eps),
                          {"x": x, "gamma": gamma, "beta": beta}, dout)
    close(bp.layernorm_forward(x, gamma, beta, eps=eps), y, np.float64)
    for got, name in zip(bp.layernorm_backward(dout, x, gamma, eps=eps), ("x", "gamma", "beta")):
        close(got, grads[name], np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=15)
@given(n=st.integers(1, 6), v=st.integers(2, 9), scale=st.sampled_from([1.0, 30.0, 1000.0]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_matches_torch(dtype, n, v, scale, seed):
    rng = np.random.default_rng(seed)
    logits, targets = rng.normal(scale=scale, size=(n, v)).astype(dtype), rng.integers(0, v, size=n)
    loss, grads = torch_pass(lambda logits: F.cross_entropy(logits, torch.tensor(targets)), {"logits": logits})
    got = bp.cross_entropy_forward(logits, targets)
    assert isinstance(got, float)
    # the loss of a (n, v) float32 sum: relative 1.3e-6 of the loss, or 1e-5 (float32 eps x log-sum-exp terms)
    np.testing.assert_allclose(got, loss, **TOL[dtype])
    close(bp.cross_entropy_backward(logits, targets), grads["logits"], dtype)


def test_every_backward_passes_the_gradient_check():
    rng = np.random.default_rng(0)
    x, w, b, dout = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5), rng.normal(size=(2, 3, 5))
    assert check_gradient(lambda x, w, b: np.sum(bp.linear_forward(x, w, b) * dout), {"x": x, "w": w, "b": b},
                          dict(zip("xwb", bp.linear_backward(dout, x, w)))) < TOLERANCE
    x, dout = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    assert check_gradient(lambda x: np.sum(bp.gelu_forward(x) * dout), {"x": x},
                          {"x": bp.gelu_backward(dout, x)}) < TOLERANCE
    g, be = rng.normal(size=4), rng.normal(size=4)
    assert check_gradient(lambda x, gamma, beta: np.sum(bp.layernorm_forward(x, gamma, beta) * dout),
                          {"x": x, "gamma": g, "beta": be},
                          dict(zip(("x", "gamma", "beta"), bp.layernorm_backward(dout, x, g)))) < TOLERANCE
    targets = rng.integers(0, 4, size=3)
    assert check_gradient(lambda logits: bp.cross_entropy_forward(logits, targets), {"logits": x},
                          {"logits": bp.cross_entropy_backward(x, targets)}) < TOLERANCE


# -- optimisers, step for step against torch.optim ------------------------------------------------------------------

def run_side_by_side(numpy_step, make_torch, dtype, steps=8):
    """Apply numpy_step(param, grad, state, t) and a torch optimiser to the same gradients; compare every step."""
    rng = np.random.default_rng(0)
    param = rng.normal(size=(4, 3)).astype(dtype)
    p = torch.tensor(param.copy(), requires_grad=True)
    optimizer, state = make_torch([p]), None
    for t in range(1, steps + 1):
        grad = rng.normal(size=param.shape).astype(dtype)
        param, state = numpy_step(param, grad, state, t)
        p.grad = torch.tensor(grad)
        optimizer.step()
        close(param, p.detach().numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_matches_torch(dtype):
    run_side_by_side(lambda p, g, s, t: (sgd_step(p, g, lr=0.1), None),
                     lambda ps: torch.optim.SGD(ps, lr=0.1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_matches_torch(dtype):
    def step(p, g, velocity, t):
        return momentum_step(p, g, np.zeros_like(p) if velocity is None else velocity, lr=0.05, momentum=0.8)

    run_side_by_side(step, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_and_adamw_match_torch(dtype, weight_decay):
    def step(p, g, mv, t):
        m, v = (np.zeros_like(p), np.zeros_like(p)) if mv is None else mv
        p, m, v = adam_step(p, g, m, v, t, lr=0.01, beta1=0.85, beta2=0.99, eps=1e-7, weight_decay=weight_decay)
        return p, (m, v)

    torch_class = torch.optim.AdamW if weight_decay else torch.optim.Adam
    run_side_by_side(step, lambda ps: torch_class(ps, lr=0.01, betas=(0.85, 0.99), eps=1e-7,
                                                  weight_decay=weight_decay), dtype)


def test_optimiser_steps_do_not_change_their_inputs():
    p, g, s = np.ones(3), np.full(3, 0.5), np.full(3, 0.25)
    sgd_step(p, g, lr=0.1)
    momentum_step(p, g, s, lr=0.1)
    adam_step(p, g, s, s, 2, lr=0.1, weight_decay=0.1)
    assert (p == 1).all() and (g == 0.5).all() and (s == 0.25).all()


def test_optimiser_classes_drive_the_steps_like_torch():
    """The dict-of-parameters optimisers of llmcourse.mlp_lm run the same updates as torch.optim."""
    rng = np.random.default_rng(0)
    start = {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}
    grads = [{k: rng.normal(size=v.shape) for k, v in start.items()} for _ in range(4)]
    for ours, make in [(SGD(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
                       (Momentum(0.1, 0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
                       (Adam(0.01, 0.1), lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1))]:
        params = dict(start)
        tensors = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
        optimizer = make(list(tensors.values()))
        for g in grads:
            ours.update(params, g)
            for k, t in tensors.items():
                t.grad = torch.tensor(g[k])
            optimizer.step()
        for k in start:
            close(params[k], tensors[k].detach().numpy(), np.float64)


# -- bad inputs -------------------------------------------------------------------------------------------------------

def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="do not fit"):
        bp.linear_forward(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"b must be \(out,\)"):
        bp.linear_forward(np.zeros((2, 3)), np.zeros((3, 5)), np.zeros(4))
    with pytest.raises(ValueError, match="dout has shape"):
        bp.linear_backward(np.zeros((2, 4)), np.zeros((2, 3)), np.zeros((3, 5)))
    with pytest.raises(TypeError, match="float32 or float64"):
        bp.gelu_forward(np.arange(3))
    with pytest.raises(ValueError, match="dout has shape"):
        bp.gelu_backward(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="gamma has shape"):
        bp.layernorm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="gamma has shape"):
        bp.layernorm_backward(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        bp.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer class ids"):
        bp.cross_entropy_backward(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits must be \(N, V\)"):
        bp.cross_entropy_forward(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="starts at 1"):
        adam_step(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 0, lr=0.1)
    with pytest.raises(ValueError, match="grad has shape"):
        sgd_step(np.zeros(2), np.zeros(3), lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        sgd_step(np.zeros(2), np.zeros(2), lr=-1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        sgd_step(np.arange(2), np.zeros(2), lr=0.1)
    with pytest.raises(ValueError, match="velocity has shape"):
        momentum_step(np.zeros(2), np.zeros(2), np.zeros((2, 1)), lr=0.1)
    with pytest.raises(ValueError, match="0 <= momentum < 1"):
        momentum_step(np.zeros(2), np.zeros(2), np.zeros(2), lr=0.1, momentum=1.0)


# -- the MLP language model -------------------------------------------------------------------------------------------

def test_windows():
    contexts, targets = windows(np.arange(6), 3)
    np.testing.assert_array_equal(contexts, [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(targets, [3, 4, 5])
    with pytest.raises(ValueError, match="longer than the context"):
        windows(np.arange(3), 3)


def test_mlp_gradients_pass_the_gradient_check():
    """Backprop through the whole model (embedding, Linear, LayerNorm, GELU, Linear, cross-entropy)."""
    model = MLPLanguageModel(7, context=3, embed_dim=2, hidden=5, dtype=np.float64, seed=1)
    model.params["w2"] *= 30  # the init is near-uniform on purpose; make the logits (and their gradients) matter
    rng = np.random.default_rng(0)
    contexts, targets = rng.integers(0, 7, size=(4, 3)), rng.integers(0, 7, size=4)
    loss, grads = model.loss_and_grads(contexts, targets)

    def f(**params):
        model.params.update(params)
        return model.loss_and_grads(contexts, targets)[0]

    assert check_gradient(f, dict(model.params), grads) < TOLERANCE


def test_mlp_forward_matches_torch():
    model = MLPLanguageModel(11, context=4, embed_dim=3, hidden=8, dtype=np.float64)
    p = {k: torch.tensor(v) for k, v in model.params.items()}
    contexts = np.random.default_rng(0).integers(0, 11, size=(5, 4))
    h = p["embedding"][torch.tensor(contexts)].reshape(5, -1) @ p["w1"] + p["b1"]
    h = F.gelu(F.layer_norm(h, (8,), p["gamma"], p["beta"]), approximate="tanh")
    close(model.logits(contexts), (h @ p["w2"] + p["b2"]).numpy(), np.float64)


def test_training_beats_the_bigram_baseline_on_a_toy_text():
    # In "abcab..." the next letter depends on the one before; in this text it depends on the two before,
    # which a bigram model cannot see and the MLP with context 2 can.
    rng = np.random.default_rng(0)
    ids = np.array([int(c) for c in "".join(rng.choice(["012", "021"], size=600))])
    train_ids, val_ids = ids[:1500], ids[1500:]
    model = MLPLanguageModel(3, context=2, embed_dim=4, hidden=16, seed=0)
    history = train(model, Adam(0.02), train_ids, steps=150, batch_size=64, val_ids=val_ids, evals=2)
    assert len(history.train_loss) == 150 and history.val_steps == [75, 150]
    assert history.train_loss[-1] < history.train_loss[0]
    assert np.exp(history.val_loss[-1]) < bigram_baseline(train_ids, val_ids, 3, context=2)
    assert model.mean_loss(val_ids) == pytest.approx(history.val_loss[-1])


def test_sample_continues_the_prompt():
    model = MLPLanguageModel(5, context=2, embed_dim=2, hidden=4)
    out = model.sample([1, 2], 6, np.random.default_rng(0))
    assert out[:2] == [1, 2] and len(out) == 8 and all(0 <= i < 5 for i in out)
    with pytest.raises(ValueError, match="at least 2"):
        model.sample([1], 3, np.random.default_rng(0))


def test_full_batch_training_is_gradient_descent_on_every_window():
    ids = np.random.default_rng(0).integers(0, 5, size=40)
    model, copy = (MLPLanguageModel(5, context=3, embed_dim=2, hidden=4, dtype=np.float64) for _ in range(2))
    history = train(model, SGD(0.5), ids, steps=2, batch_size=None)
    contexts, targets = windows(ids, 3)
    for step in range(2):
        loss, grads = copy.loss_and_grads(contexts, targets)  # the gradient of the mean loss over every window
        assert history.train_loss[step] == pytest.approx(loss)
        copy.params = {k: v - 0.5 * grads[k] for k, v in copy.params.items()}
    for k in copy.params:
        close(model.params[k], copy.params[k], np.float64)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        train(model, SGD(0.5), ids, steps=1, batch_size=0)


def test_quadratic_path_follows_the_closed_form_and_stops():
    # SGD on f = s p^2 / 2 multiplies p by (1 - lr s) at every step.
    path = quadratic_path(SGD(0.1), [1.0, 4.0], [1.0, -2.0], 5)
    close(path, np.array([[1.0, -2.0]]) * (1 - 0.1 * np.array([1.0, 4.0])) ** np.arange(6)[:, None], np.float64)
    assert len(quadratic_path(SGD(0.5), [1.0], [1.0], 100, tol=0.1)) == 5  # 1, 0.5, ..., 0.0625: 4 steps
    assert len(quadratic_path(SGD(3.0), [1.0], [1.0], 100)) < 100  # |1 - 3| = 2 per step: diverges, stops early


def test_fewest_steps_picks_the_best_learning_rate():
    # For SGD on f = p^2 / 2, lr = 1 jumps to the minimum in one step; the others need more.
    steps, lr = fewest_steps(SGD, [0.5, 1.0, 1.5], [1.0], [1.0], tol=1e-3, max_steps=50)
    assert (steps, lr) == (1, 1.0)
    assert fewest_steps(SGD, [2.5], [1.0], [1.0], tol=1e-3, max_steps=50)[0] == np.inf  # diverges
