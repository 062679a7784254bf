"""Graded tests of notebook 03: the backward passes of Linear, GELU, LayerNorm, softmax cross-entropy, and Adam(W).

Each backward is compared with `torch.autograd` (the same function differentiated by PyTorch) and with central
differences of the forward pass. The forwards used here are written out in the tests (x @ w + b, ...) or taken
from PyTorch, so a test never compares the learner's code with itself.
"""

import numpy as np
import torch
import torch.nn.functional as F

from llmcourse.course.grading import assert_allclose, exercise, expect_error
from llmcourse.gradcheck import check_gradient

# float64: the learner's code and PyTorch differ only in the order of their sums, ~1e-16 relative; rtol 1e-7 is
# COURSE.md's float64 tolerance. atol 1e-12 covers entries that are ~0 by cancellation (a relative test is
# meaningless there) and is still far below any wrong formula's error on O(1) data.
F64 = {"rtol": 1e-7, "atol": 1e-12}
# float32: PyTorch's own defaults for float32 comparisons (rounding ~6e-8 per operation, a few dozen operations).
F32 = {"rtol": 1.3e-6, "atol": 1e-5}
# Central differences in float64 with h = 1e-5: a correct backward lands near 1e-10, a wrong one above 1e-3.
GRADCHECK = 1e-7


def _torch_backward(forward, inputs: dict, dout: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """PyTorch's forward output and gradients of sum(forward(**inputs) * dout) (or of the scalar forward)."""
    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in inputs.items()}
    out = forward(**tensors)
    (out if dout is None else (out * torch.tensor(dout)).sum()).backward()
    return out.detach().numpy(), {name: t.grad.numpy() for name, t in tensors.items()}


def _check_dtype(value, dtype, what: str) -> None:
    assert np.asarray(value).dtype == dtype, f"{what} has dtype {np.asarray(value).dtype}, expected {dtype} " \
                                             f"(keep the input's dtype)"


# -- linear_backward ------------------------------------------------------------------------------------------------

@exercise("linear_backward")
def test_linear_backward_matches_torch(impl):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    dout = rng.normal(size=(5, 3))
    _, expected = _torch_backward(lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b}, dout)
    got = impl.backprop.linear_backward(dout, x, w)
    assert isinstance(got, tuple) and len(got) == 3, "linear_backward must return a tuple (dx, dw, db)"
    for name, value in zip(("dx", "dw", "db"), got):
        assert_allclose(value, expected[name[1:]], **F64, what=f"linear_backward's {name}")


@exercise("linear_backward")
def test_linear_backward_sums_over_batch_and_time(impl):
    # Edge case: x has two leading axes (batch, time), as in a transformer; dw and db add over both.
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    dout = rng.normal(size=(2, 3, 5))
    _, expected = _torch_backward(lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b}, dout)
    dx, dw, db = impl.backprop.linear_backward(dout, x, w)
    assert_allclose(dx, expected["x"], **F64, what="linear_backward's dx for x of shape (B, T, in)")
    assert_allclose(dw, expected["w"], **F64, what="linear_backward's dw for x of shape (B, T, in)")
    assert_allclose(db, expected["b"], **F64, what="linear_backward's db for x of shape (B, T, in)")


@exercise("linear_backward")
def test_linear_backward_passes_gradient_check(impl):
    rng = np.random.default_rng(2)
    x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
    dout = rng.normal(size=(3, 2))
    dx, dw, db = impl.backprop.linear_backward(dout, x, w)
    error = check_gradient(lambda x, w, b: np.sum((x @ w + b) * dout), {"x": x, "w": w, "b": b},
                           {"x": dx, "w": dw, "b": db})
    assert error < GRADCHECK, f"linear_backward disagrees with central differences: relative error {error:.1e}"


@exercise("linear_backward")
def test_linear_backward_float32(impl):
    rng = np.random.default_rng(3)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((6, 5), (5, 4), (4,)))
    dout = rng.normal(size=(6, 4)).astype(np.float32)
    _, expected = _torch_backward(lambda x, w, b: x @ w + b, {"x": x, "w": w, "b": b}, dout)
    for name, value in zip(("dx", "dw", "db"), impl.backprop.linear_backward(dout, x, w)):
        _check_dtype(value, np.float32, f"linear_backward's {name} for float32 inputs")
        assert_allclose(value, expected[name[1:]], **F32, what=f"linear_backward's {name} (float32)")


# -- gelu_backward --------------------------------------------------------------------------------------------------

def _torch_gelu(x):
    return F.gelu(x, approximate="tanh")


@exercise("gelu_backward")
def test_gelu_backward_matches_torch(impl):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-5, 5, 21), rng.normal(scale=2.0, size=11)]).reshape(4, 8)  # includes 0
    dout = rng.normal(size=x.shape)
    _, expected = _torch_backward(_torch_gelu, {"x": x}, dout)
    assert_allclose(impl.backprop.gelu_backward(dout, x), expected["x"], **F64, what="gelu_backward(dout, x)")


@exercise("gelu_backward")
def test_gelu_backward_passes_gradient_check(impl):
    rng = np.random.default_rng(1)
    x, dout = rng.normal(scale=2.0, size=(3, 5)), rng.normal(size=(3, 5))
    dx = impl.backprop.gelu_backward(dout, x)
    error = check_gradient(lambda x: np.sum(_torch_gelu(torch.tensor(x)).numpy() * dout), {"x": x}, {"x": dx})
    assert error < GRADCHECK, f"gelu_backward disagrees with central differences: relative error {error:.1e}"


@exercise("gelu_backward")
def test_gelu_backward_far_from_zero(impl):
    # Edge case: large |x|. GELU is ~x on the right (slope 1) and ~0 on the left (slope 0); no NaN or overflow.
    x = np.array([-40.0, -12.0, -6.0, 6.0, 12.0, 40.0])
    dout = np.ones_like(x)
    _, expected = _torch_backward(_torch_gelu, {"x": x}, dout)
    assert_allclose(impl.backprop.gelu_backward(dout, x), expected["x"], **F64,
                    what="gelu_backward at large |x| (expected slopes ~0 on the left, ~1 on the right)")


@exercise("gelu_backward")
def test_gelu_backward_float32(impl):
    rng = np.random.default_rng(2)
    x, dout = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    _, expected = _torch_backward(_torch_gelu, {"x": x}, dout)
    dx = impl.backprop.gelu_backward(dout, x)
    _check_dtype(dx, np.float32, "gelu_backward for float32 inputs")
    assert_allclose(dx, expected["x"], **F32, what="gelu_backward(dout, x) (float32)")


# -- layernorm_backward ---------------------------------------------------------------------------------------------

def _torch_layernorm(x, gamma, beta):
    return F.layer_norm(x, gamma.shape, gamma, beta, eps=1e-5)


def _layernorm_case(rng, shape, dtype=np.float64):
    D = shape[-1]
    x = rng.normal(loc=1.0, scale=2.0, size=shape)
    gamma, beta = rng.normal(size=D), rng.normal(size=D)
    return {"x": x.astype(dtype), "gamma": gamma.astype(dtype), "beta": beta.astype(dtype)}, \
        rng.normal(size=shape).astype(dtype)


@exercise("layernorm_backward")
def test_layernorm_backward_matches_torch(impl):
    inputs, dout = _layernorm_case(np.random.default_rng(0), (2, 3, 8))  # (B, T, D): dgamma sums over B and T
    _, expected = _torch_backward(_torch_layernorm, inputs, dout)
    got = impl.backprop.layernorm_backward(dout, inputs["x"], inputs["gamma"])
    assert isinstance(got, tuple) and len(got) == 3, "layernorm_backward must return a tuple (dx, dgamma, dbeta)"
    for name, value in zip(("dx", "dgamma", "dbeta"), got):
        assert_allclose(value, expected[name[1:]], **F64, what=f"layernorm_backward's {name}")


@exercise("layernorm_backward")
def test_layernorm_backward_passes_gradient_check(impl):
    inputs, dout = _layernorm_case(np.random.default_rng(1), (4, 6))
    dx, dgamma, dbeta = impl.backprop.layernorm_backward(dout, inputs["x"], inputs["gamma"])
    error = check_gradient(lambda x, gamma, beta: np.sum(_torch_layernorm(*map(torch.tensor, (x, gamma, beta)))
                                                         .numpy() * dout),
                           inputs, {"x": dx, "gamma": dgamma, "beta": dbeta})
    assert error < GRADCHECK, f"layernorm_backward disagrees with central differences: relative error {error:.1e}"


@exercise("layernorm_backward")
def test_layernorm_backward_constant_row(impl):
    # Edge case: a row whose entries are all equal has variance 0; eps keeps 1/sqrt(var + eps) finite.
    inputs, dout = _layernorm_case(np.random.default_rng(2), (3, 5))
    inputs["x"][1] = 0.7
    _, expected = _torch_backward(_torch_layernorm, inputs, dout)
    for name, value in zip(("dx", "dgamma", "dbeta"),
                           impl.backprop.layernorm_backward(dout, inputs["x"], inputs["gamma"])):
        assert_allclose(value, expected[name[1:]], **F64, what=f"layernorm_backward's {name} with a constant row")


@exercise("layernorm_backward")
def test_layernorm_backward_float32(impl):
    inputs, dout = _layernorm_case(np.random.default_rng(3), (4, 16), np.float32)
    _, expected = _torch_backward(_torch_layernorm, inputs, dout)
    for name, value in zip(("dx", "dgamma", "dbeta"),
                           impl.backprop.layernorm_backward(dout, inputs["x"], inputs["gamma"])):
        _check_dtype(value, np.float32, f"layernorm_backward's {name} for float32 inputs")
        assert_allclose(value, expected[name[1:]], **F32, what=f"layernorm_backward's {name} (float32)")


# -- cross_entropy_backward -----------------------------------------------------------------------------------------

def _torch_cross_entropy_grad(logits, targets):
    _, grads = _torch_backward(lambda logits: F.cross_entropy(logits, torch.tensor(targets)), {"logits": logits})
    return grads["logits"]


@exercise("cross_entropy_backward")
def test_cross_entropy_backward_matches_torch(impl):
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(scale=2.0, size=(6, 10)), rng.integers(0, 10, size=6)
    assert_allclose(impl.backprop.cross_entropy_backward(logits, targets), _torch_cross_entropy_grad(logits, targets),
                    **F64, what="cross_entropy_backward(logits, targets)")


@exercise("cross_entropy_backward")
def test_cross_entropy_backward_passes_gradient_check(impl):
    rng = np.random.default_rng(1)
    logits, targets = rng.normal(size=(4, 5)), rng.integers(0, 5, size=4)
    dlogits = impl.backprop.cross_entropy_backward(logits, targets)
    error = check_gradient(lambda logits: F.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item(),
                           {"logits": logits}, {"logits": dlogits})
    assert error < GRADCHECK, f"cross_entropy_backward disagrees with central differences: relative error " \
                              f"{error:.1e} (did you divide by the number of rows N?)"


@exercise("cross_entropy_backward")
def test_cross_entropy_backward_large_logits_and_one_row(impl):
    # Edge cases: logits in the thousands (exp overflows without the max trick) and a batch of a single row.
    logits = np.array([[1000.0, 1002.0, 998.0, -1000.0]])
    targets = np.array([2])
    got = impl.backprop.cross_entropy_backward(logits, targets)
    assert_allclose(got, _torch_cross_entropy_grad(logits, targets), **F64,
                    what="cross_entropy_backward for logits around 1000 (one row)")


@exercise("cross_entropy_backward")
def test_cross_entropy_backward_float32(impl):
    rng = np.random.default_rng(2)
    logits, targets = rng.normal(size=(8, 12)).astype(np.float32), rng.integers(0, 12, size=8)
    got = impl.backprop.cross_entropy_backward(logits, targets)
    _check_dtype(got, np.float32, "cross_entropy_backward for float32 logits")
    assert_allclose(got, _torch_cross_entropy_grad(logits, targets), **F32,
                    what="cross_entropy_backward(logits, targets) (float32)")


# -- adam_step ------------------------------------------------------------------------------------------------------

def _adam_against_torch(impl, optimizer_class, *, dtype, weight_decay, steps=6, seed=0):
    """Run adam_step and torch.optim.<optimizer_class> side by side on the same gradients; compare every step."""
    rng = np.random.default_rng(seed)
    param = rng.normal(size=(3, 4)).astype(dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    p_torch = torch.tensor(param.copy(), requires_grad=True)
    hyper = {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": weight_decay}
    optimizer = optimizer_class([p_torch], **hyper)
    tolerance = F64 if dtype == np.float64 else F32
    for t in range(1, steps + 1):
        grad = rng.normal(size=param.shape).astype(dtype)
        param, m, v = impl.backprop.adam_step(param, grad, m, v, t, lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6,
                                              weight_decay=weight_decay)
        p_torch.grad = torch.tensor(grad)
        optimizer.step()
        state = optimizer.state[p_torch]
        name = f"{optimizer_class.__name__} ({np.dtype(dtype).name}) at step {t}"
        assert_allclose(param, p_torch.detach().numpy(), **tolerance, what=f"the parameter after {name}")
        assert_allclose(m, state["exp_avg"].numpy(), **tolerance, what=f"m after {name}")
        assert_allclose(v, state["exp_avg_sq"].numpy(), **tolerance, what=f"v after {name}")
    for name, value in (("param", param), ("m", m), ("v", v)):
        _check_dtype(value, dtype, f"adam_step's {name} for {np.dtype(dtype).name} inputs")


@exercise("adam_step")
def test_adam_step_matches_torch_adam(impl):
    _adam_against_torch(impl, torch.optim.Adam, dtype=np.float64, weight_decay=0.0)


@exercise("adam_step")
def test_adam_step_with_weight_decay_matches_torch_adamw(impl):
    # weight_decay > 0 is AdamW's decoupled decay (torch.optim.Adam would add it to the gradient instead).
    _adam_against_torch(impl, torch.optim.AdamW, dtype=np.float64, weight_decay=0.1)


@exercise("adam_step")
def test_adam_step_float32(impl):
    _adam_against_torch(impl, torch.optim.AdamW, dtype=np.float32, weight_decay=0.01, seed=1)


@exercise("adam_step")
def test_adam_first_step_moves_by_lr(impl):
    # Edge case, computed by hand: at t = 1 the bias correction gives m_hat = g and v_hat = g^2, so every entry
    # moves by lr * g / (|g| + eps), i.e. by lr against the sign of g, whatever the size of g.
    param = np.array([1.0, -2.0, 0.5, 3.0])
    grad = np.array([1e-3, -50.0, 2.0, 0.0])
    new, m, v = impl.backprop.adam_step(param, grad, np.zeros(4), np.zeros(4), 1, lr=0.1)
    expected = param - 0.1 * grad / (np.abs(grad) + 1e-8)
    assert_allclose(new, expected, **F64, what="the parameter after the first Adam step (t=1)")
    assert_allclose(m, 0.1 * grad, **F64, what="m after the first step, (1 - beta1) * grad")
    assert_allclose(v, 0.001 * grad**2, **F64, what="v after the first step, (1 - beta2) * grad^2")


# ===================================================================================================================
# sgd_step and momentum_step (notebook 03b): step for step against torch.optim.SGD, without and with momentum
# ===================================================================================================================

def _sgd_against_torch(impl, *, momentum: float, dtype, steps: int = 6, seed: int = 0) -> None:
    """Run sgd_step (momentum 0) or momentum_step and torch.optim.SGD on the same gradients; compare every step."""
    rng = np.random.default_rng(seed)
    param = rng.normal(size=(3, 4)).astype(dtype)
    velocity = np.zeros_like(param)
    p_torch = torch.tensor(param.copy(), requires_grad=True)
    optimizer = torch.optim.SGD([p_torch], lr=0.3, momentum=momentum)
    tolerance = F64 if dtype == np.float64 else F32
    name = "sgd_step" if momentum == 0 else "momentum_step"
    for t in range(1, steps + 1):
        grad = rng.normal(size=param.shape).astype(dtype)
        if momentum == 0:
            param = impl.backprop.sgd_step(param, grad, lr=0.3)
        else:
            param, velocity = impl.backprop.momentum_step(param, grad, velocity, lr=0.3, momentum=momentum)
        p_torch.grad = torch.tensor(grad)
        optimizer.step()
        what = f"{name} ({np.dtype(dtype).name}, momentum {momentum}) at step {t}"
        assert_allclose(param, p_torch.detach().numpy(), **tolerance, what=f"the parameter after {what}")
        if momentum:
            assert_allclose(velocity, optimizer.state[p_torch]["momentum_buffer"].numpy(), **tolerance,
                            what=f"the velocity after {what} (torch's momentum_buffer)")
    _check_dtype(param, dtype, f"{name}'s param for {np.dtype(dtype).name} inputs")
    if momentum:
        _check_dtype(velocity, dtype, f"momentum_step's velocity for {np.dtype(dtype).name} inputs")


@exercise("sgd_step")
def test_sgd_step_matches_torch_sgd(impl):
    _sgd_against_torch(impl, momentum=0.0, dtype=np.float64)


@exercise("sgd_step")
def test_sgd_step_float32(impl):
    _sgd_against_torch(impl, momentum=0.0, dtype=np.float32, seed=1)


@exercise("sgd_step")
def test_sgd_step_leaves_its_inputs_alone(impl):
    # The caller keeps param and grad (the optimiser classes hold them in dicts): the step returns a new array.
    param, grad = np.array([1.0, -2.0, 0.5]), np.array([0.5, 0.25, -4.0])
    new = impl.backprop.sgd_step(param, grad, lr=0.1)
    assert_allclose(new, [0.95, -2.025, 0.9], **F64, what="sgd_step([1, -2, 0.5], [0.5, 0.25, -4], lr=0.1)")
    assert_allclose(param, [1.0, -2.0, 0.5], **F64, what="param after sgd_step (it must not change in place)")
    assert_allclose(grad, [0.5, 0.25, -4.0], **F64, what="grad after sgd_step (it must not change in place)")


@exercise("sgd_step")
def test_sgd_step_rejects_bad_input(impl):
    assert_allclose(impl.backprop.sgd_step(np.ones(2), np.ones(2), lr=0.5), [0.5, 0.5], **F64,
                    what="sgd_step(ones(2), ones(2), lr=0.5)")
    with expect_error(ValueError, match="shape", what="sgd_step with grad of shape (3,) for param of shape (2,)"):
        impl.backprop.sgd_step(np.ones(2), np.ones(3), lr=0.1)
    with expect_error(ValueError, match="lr", what="sgd_step with lr=-0.1"):
        impl.backprop.sgd_step(np.ones(2), np.ones(2), lr=-0.1)


@exercise("momentum_step")
def test_momentum_step_matches_torch_sgd_with_momentum(impl):
    _sgd_against_torch(impl, momentum=0.9, dtype=np.float64)


@exercise("momentum_step")
def test_momentum_step_float32(impl):
    _sgd_against_torch(impl, momentum=0.5, dtype=np.float32, seed=1)


@exercise("momentum_step")
def test_momentum_step_with_momentum_zero_is_sgd(impl):
    # Edge case: momentum 0 forgets the old velocity, so the step is plain SGD whatever the velocity was.
    param, grad, velocity = np.array([1.0, 2.0]), np.array([0.5, -1.0]), np.array([100.0, -100.0])
    new, new_velocity = impl.backprop.momentum_step(param, grad, velocity, lr=0.1, momentum=0.0)
    assert_allclose(new, [0.95, 2.1], **F64, what="the parameter after momentum_step with momentum=0")
    assert_allclose(new_velocity, grad, **F64, what="the velocity after momentum_step with momentum=0 (= grad)")


@exercise("momentum_step")
def test_momentum_step_leaves_its_inputs_alone(impl):
    param, grad, velocity = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([1.0, 1.0])
    new, new_velocity = impl.backprop.momentum_step(param, grad, velocity, lr=0.1, momentum=0.5)
    assert_allclose(new_velocity, [1.0, 0.75], **F64, what="the velocity, 0.5 * [1, 1] + [0.5, 0.25]")
    assert_allclose(new, [0.9, -2.075], **F64, what="the parameter, [1, -2] - 0.1 * velocity")
    for name, value, before in (("param", param, [1.0, -2.0]), ("grad", grad, [0.5, 0.25]),
                                ("velocity", velocity, [1.0, 1.0])):
        assert_allclose(value, before, **F64, what=f"{name} after momentum_step (it must not change in place)")


@exercise("momentum_step")
def test_momentum_step_rejects_bad_input(impl):
    new, _ = impl.backprop.momentum_step(np.ones(2), np.ones(2), np.zeros(2), lr=0.5, momentum=0.9)
    assert_allclose(new, [0.5, 0.5], **F64, what="momentum_step(ones(2), ones(2), zeros(2), lr=0.5) (first step)")
    with expect_error(ValueError, match="shape", what="momentum_step with a velocity of shape (3,) for param (2,)"):
        impl.backprop.momentum_step(np.ones(2), np.ones(2), np.zeros(3), lr=0.1)
    with expect_error(ValueError, match="momentum", what="momentum_step with momentum=1.5"):
        impl.backprop.momentum_step(np.ones(2), np.ones(2), np.zeros(2), lr=0.1, momentum=1.5)
