"""The course's own graded tests: full marks for solutions/, zero and "not implemented" for exercises/."""

import pytest

from llmcourse import catalog
from llmcourse.grading.runner import format_table, grade

pytestmark = pytest.mark.slow


def test_solutions_get_full_marks():
    report = grade("solutions")
    assert report.error is None, report.error
    assert report.total == report.max_total and report.exit_code == 0, format_table(report)
    assert {ex.id for ex in report.exercises} == set(catalog.BY_ID), "some exercise has no graded test"


def test_exercises_get_zero_and_not_implemented():
    report = grade("exercises")
    assert report.error is None, report.error
    assert report.exit_code == 1
    assert report.total == 0, format_table(report)
    assert all(ex.status == "not implemented" for ex in report.exercises), format_table(report)
