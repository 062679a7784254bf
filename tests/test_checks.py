"""The graded tests' comparisons: what they accept and what they say."""

import numpy as np
import pytest

from llmcourse.course.grading.checks import assert_allclose


def test_a_masked_minus_infinity_is_matched_only_by_itself():
    """checks.assert_allclose: where -inf is expected, the tolerance rtol * |expected| is infinite and used to
    accept any finite value."""
    assert_allclose(np.array([-np.inf, 1.0]), np.array([-np.inf, 1.0]), rtol=1e-7)
    with pytest.raises(AssertionError, match="got 5, expected -inf"):
        assert_allclose(np.array([5.0, 1.0]), np.array([-np.inf, 1.0]), rtol=1e-7)


def test_the_worst_entry_is_reported_and_small_arrays_in_full():
    expected = np.array([1.0, 2.0, 3.0, 4.0])
    got = np.array([1.001, 2.0, 3.5, 4.0])  # index 0 is a little off, index 2 far off
    with pytest.raises(AssertionError) as failure:
        assert_allclose(got, expected, rtol=1e-6)
    message = str(failure.value)
    assert "at 2 of 4 entries; worst at index (2,): got 3.5, expected 3" in message
    assert "got [1.001, 2.   , 3.5  , 4.   ], expected [1., 2., 3., 4.]" in message
    with pytest.raises(AssertionError) as failure:  # large arrays: the worst entry only
        assert_allclose(np.zeros(100), np.arange(100.0), rtol=1e-6)
    assert "worst at index (99,): got 0, expected 99" in str(failure.value) and "[" not in str(failure.value)


def test_ids_name_the_first_difference_and_short_lists_in_full():
    from llmcourse.course.grading.checks import assert_equal_ids, expect_error

    with pytest.raises(AssertionError, match=r"first at index \(1,\): got 5, expected 2; got \[1, 5, 3\], "
                                             r"expected \[1, 2, 3\]"):
        assert_equal_ids([1, 5, 3], np.array([1, 2, 3]), what="ids")
    with pytest.raises(AssertionError, match=r"pack_int4 of 5 codes should raise ValueError saying 'even', but it "
                                             "returned normally"):
        with expect_error(ValueError, match="even", what="pack_int4 of 5 codes"):
            pass
    with pytest.raises(AssertionError, match="but its message should say 'even'"):
        with expect_error(ValueError, match="even", what="pack_int4 of 5 codes"):
            raise ValueError("odd")
