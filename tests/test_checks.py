"""The graded tests' comparisons: what they accept and what they say."""

import numpy as np
import pytest

from llmcourse.grading.checks import assert_allclose


def test_a_masked_minus_infinity_is_matched_only_by_itself():
    """checks.assert_allclose: where -inf is expected, the tolerance rtol * |expected| is infinite and used to
    accept any finite value."""
    assert_allclose(np.array([-np.inf, 1.0]), np.array([-np.inf, 1.0]), rtol=1e-7)
    with pytest.raises(AssertionError, match="got 5, expected -inf"):
        assert_allclose(np.array([5.0, 1.0]), np.array([-np.inf, 1.0]), rtol=1e-7)
