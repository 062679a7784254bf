"""The gradient checker: right on known derivatives, and it fails when a backward is deliberately wrong."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.gradcheck import (TOLERANCE, check_gradient, format_rows, gradient_errors, layer_checks,
                                 numerical_gradient, optimizer_errors, relative_error)
from llmcourse.course.loader import reference
from llmcourse.mlp_lm import SGD, Layers, Momentum

linear_forward = reference("backprop.linear_forward")
linear_backward = reference("backprop.linear_backward")
gelu_forward = reference("backprop.gelu_forward")
gelu_backward = reference("backprop.gelu_backward")
layernorm_forward = reference("backprop.layernorm_forward")
layernorm_backward = reference("backprop.layernorm_backward")


def test_numerical_gradient_of_a_cubic():
    x = np.array([[-2.0, 0.5], [1.5, 3.0]])
    got = numerical_gradient(lambda x: np.sum(x**3), x)
    # d/dx x^3 = 3x^2; central differences are exact for a cubic up to h^2 = 1e-10 and rounding
    np.testing.assert_allclose(got, 3 * x**2, rtol=1e-8)
    assert got.dtype == np.float64 and got.shape == x.shape


def test_numerical_gradient_works_in_float64_and_leaves_x_alone():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    seen = []
    got = numerical_gradient(lambda v: seen.append(v.dtype) or float(np.sum(np.sin(v))), x)
    assert set(seen) == {np.dtype(np.float64)}, "f must be called on float64 values"
    np.testing.assert_array_equal(x, np.array([1.0, 2.0, 3.0], dtype=np.float32))
    np.testing.assert_allclose(got, np.cos(x.astype(np.float64)), rtol=1e-9)


def test_relative_error_scale():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(a, a * (1 + 1e-12)) < 1e-11
    assert relative_error(a, -a) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes"):
        relative_error(np.zeros(2), np.zeros(3))


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6), st.lists(st.floats(-1e3, 1e3), min_size=1,
                                                                       max_size=6))
def test_relative_error_is_symmetric_and_bounded(a, b):
    n = min(len(a), len(b))
    a, b = np.array(a[:n]), np.array(b[:n])
    assert relative_error(a, b) == relative_error(b, a)
    assert 0.0 <= relative_error(a, b) <= 2.0  # |a - b| <= |a| + |b| <= 2 max(|a|, |b|)


def _linear_case(seed=0):
    rng = np.random.default_rng(seed)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    dout = rng.normal(size=(4, 2))
    return {"x": x, "w": w, "b": b}, dout, lambda x, w, b: np.sum(linear_forward(x, w, b) * dout)


def test_check_gradient_accepts_a_correct_backward():
    inputs, dout, loss = _linear_case()
    dx, dw, db = linear_backward(dout, inputs["x"], inputs["w"])
    errors = gradient_errors(loss, inputs, {"x": dx, "w": dw, "b": db})
    assert set(errors) == {"x", "w", "b"}
    assert max(errors.values()) < TOLERANCE
    assert check_gradient(loss, inputs, {"x": dx, "w": dw, "b": db}) == max(errors.values())


def _wrong_gelu_backward(dout, x):
    # forgets the product rule: only the 0.5 (1 + tanh(u)) term
    return dout * 0.5 * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _wrong_layernorm_dx(dout, x, gamma):
    # treats mean and variance as constants: misses the two terms every entry of a row shares
    return dout * gamma / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)


def test_check_gradient_catches_wrong_backwards():
    """The checker must be able to fail: three plausible mistakes each show a large relative error."""
    inputs, dout, loss = _linear_case(1)
    dx, dw, db = linear_backward(dout, inputs["x"], inputs["w"])
    wrong_dw = inputs["x"].T @ dout / len(dout)  # averages over the batch although the loss sums
    assert check_gradient(loss, inputs, {"x": dx, "w": wrong_dw, "b": db}) > 1e-2

    rng = np.random.default_rng(2)
    x, dout = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    assert check_gradient(lambda x: np.sum(gelu_forward(x) * dout), {"x": x},
                          {"x": _wrong_gelu_backward(dout, x)}) > 1e-2
    assert check_gradient(lambda x: np.sum(gelu_forward(x) * dout), {"x": x},
                          {"x": gelu_backward(dout, x)}) < TOLERANCE

    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    loss = lambda x: np.sum(layernorm_forward(x, gamma, beta) * dout)  # noqa: E731
    assert check_gradient(loss, {"x": x}, {"x": _wrong_layernorm_dx(dout, x, gamma)}) > 1e-2
    assert check_gradient(loss, {"x": x}, {"x": layernorm_backward(dout, x, gamma)[0]}) < TOLERANCE


def test_check_gradient_catches_a_tiny_error():
    # a gradient off by 1e-4 relative is far above the checker's noise (~1e-10)
    inputs, dout, loss = _linear_case(3)
    dx, dw, db = linear_backward(dout, inputs["x"], inputs["w"])
    assert check_gradient(loss, inputs, {"x": dx * (1 + 1e-4), "w": dw, "b": db}) > 5e-5


def test_gradient_errors_rejects_unknown_names():
    inputs, dout, loss = _linear_case()
    with pytest.raises(ValueError, match="not among the inputs"):
        gradient_errors(loss, inputs, {"bias": np.zeros(2)})


def test_layer_checks_table():
    rows = layer_checks(Layers.load(reference))
    assert [r["layer"] for r in rows] == ["Linear", "GELU", "LayerNorm", "softmax cross-entropy"]
    for r in rows:
        assert r["vs central differences"] < TOLERANCE, r
        assert r["forward vs torch"] < 1e-13, r  # float64, only the order of operations differs
        assert r["backward vs torch.autograd"] < 1e-13, r
    text = format_rows(rows)
    assert text.splitlines()[0].startswith("layer") and len(text.splitlines()) == 5


def test_optimizer_errors_tell_a_matching_optimiser_from_a_wrong_one():
    same = optimizer_errors(Momentum(0.1, 0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), steps=4)
    assert len(same) == 4 and max(same) < 1e-15
    # plain SGD against torch's momentum: equal after the first step (velocity = grad), apart from then on
    wrong = optimizer_errors(SGD(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), steps=4)
    assert wrong[0] < 1e-15 and min(wrong[1:]) > 1e-3
