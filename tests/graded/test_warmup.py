"""Graded tests of the warm-up exercise (notebook 00)."""

import numpy as np

from llmcourse.course.grading import exercise, expect_error


@exercise("warmup_mean_squared_error")
def test_mse_matches_numpy(impl):
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    got = impl.warmup.mean_squared_error(p, t)
    assert isinstance(got, float), f"mean_squared_error should return a Python float, got {type(got).__name__}"
    # float64 inputs, a single reduction: only rounding differs from the reference, so rtol 1e-12 is ample.
    assert np.isclose(got, ((p - t) ** 2).mean(), rtol=1e-12, atol=0), f"mean_squared_error gave {got}"


@exercise("warmup_mean_squared_error")
def test_mse_of_identical_arrays_is_zero(impl):
    x = np.arange(6.0).reshape(2, 3)
    assert impl.warmup.mean_squared_error(x, x) == 0.0, "the error of an array against itself must be 0"


@exercise("warmup_mean_squared_error")
def test_mse_rejects_mismatched_shapes(impl):
    with expect_error(ValueError, match=r"shape", what="mean_squared_error of shapes (3,) and (4,)"):
        impl.warmup.mean_squared_error(np.zeros(3), np.zeros(4))
    # shapes NumPy would broadcast silently are still different shapes: the docstring asks for an error
    for p_shape, t_shape in (((3, 1), (3,)), ((2, 3), (3,)), ((1,), (4,))):
        with expect_error(ValueError, match=r"shape", what=f"mean_squared_error of shapes {p_shape} and {t_shape} "
                                                           "(which NumPy would broadcast)"):
            impl.warmup.mean_squared_error(np.zeros(p_shape), np.ones(t_shape))
