"""Shared by every test: the --impl option that picks what the graded tests run against, and its fixture."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so the suite is deterministic (CI and a learner see the same
# result); `pytest --hypothesis-profile=explore` searches new examples when developing.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("deterministic")

from llmcourse.grading.isolation import other_exercises_in_reach
from llmcourse.grading.marks import exercise_id_of, register_markers
from llmcourse.impl import IMPL_ENV, Implementation, resolve_impl


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default=os.environ.get(IMPL_ENV, "exercises"),
        help="what the graded tests run against: exercises (default, or $LLMCOURSE_IMPL), solutions, or a folder",
    )
    parser.addoption(
        "--own-dependencies", action="store_true",
        help="graded tests call the implementation's own versions of the other exercises a function uses (default: "
             "the reference's, so that each exercise is graded on its own code)",
    )


def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)


@pytest.fixture(scope="session")
def impl(pytestconfig: pytest.Config) -> Implementation:
    """The implementation under test; modules are imported inside each test, so one broken file fails only its
    own tests: `impl.attention.softmax`."""
    return Implementation(resolve_impl(pytestconfig.getoption("--impl")))


@pytest.fixture(autouse=True)
def _grade_each_exercise_on_its_own(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a graded test of exercise X, the other exercises X's code calls are the reference's: a wrong softmax
    costs softmax's points, not causal attention's too (llmcourse.grading.isolation)."""
    exercise_id = exercise_id_of(request.node)
    if exercise_id is None or request.config.getoption("--own-dependencies"):
        return
    for module, name, function in other_exercises_in_reach(request.getfixturevalue("impl"), exercise_id):
        monkeypatch.setattr(module, name, function)
