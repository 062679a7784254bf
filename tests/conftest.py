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

from llmcourse.grading.isolation import answered_by_reference
from llmcourse.grading.marks import exercise_id_of, register_markers
from llmcourse.grading.sandbox import SANDBOXES, SandboxedImplementation
from llmcourse.impl import IMPL_ENV, resolve_impl
from llmcourse.loader import reference


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
    parser.addoption("--sandbox", choices=SANDBOXES, default="auto",
                     help="where the implementation's code runs: bubblewrap, none (a plain subprocess), or auto "
                          "(bubblewrap when it works here)")
    parser.addoption("--time-limit", type=float, default=30.0,
                     help="seconds the implementation's code may run in one test (30)")
    parser.addoption("--memory-mb", type=int, default=4096, help="address space of the process running it (4096)")
    parser.addoption("--grader-state", default=None,
                     help="a folder where test processes share what they learnt (modules that do not import)")


def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)


@pytest.fixture(scope="session")
def impl(pytestconfig: pytest.Config):
    """The implementation under test, run in a sandbox process (llmcourse.grading.sandbox): `impl.attention.softmax`
    calls the learner's function there with this test's arguments and brings the result back as data. Modules are
    imported inside each test, so one broken file fails only its own tests."""
    option = pytestconfig.getoption
    implementation = SandboxedImplementation(
        resolve_impl(option("--impl")), sandbox=option("--sandbox"), timeout=option("--time-limit"),
        memory_mb=option("--memory-mb"), state_dir=option("--grader-state"),
        answer=lambda module, function: reference(f"{module}.{function}"))
    yield implementation
    implementation.close()


@pytest.fixture(autouse=True)
def _grade_each_exercise_on_its_own(request: pytest.FixtureRequest) -> None:
    """Each graded test gets the full time limit, and in a graded test of exercise X the earlier exercises X's code
    calls are answered by the reference: a wrong softmax costs softmax's points, not causal attention's too
    (llmcourse.grading.isolation)."""
    exercise_id = exercise_id_of(request.node)
    if exercise_id is None:
        return
    request.getfixturevalue("impl").begin_test(answered_by_reference(exercise_id),
                                               substitute=not request.config.getoption("--own-dependencies"))
