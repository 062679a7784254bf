"""Grading: markers for graded tests, learner-friendly checks, and the grader that runs them."""

from llmcourse.course.grading.checks import assert_allclose, assert_equal_ids, expect_error
from llmcourse.course.grading.marks import exercise

__all__ = ["assert_allclose", "assert_equal_ids", "exercise", "expect_error"]
