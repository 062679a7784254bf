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

from llmcourse.grading.isolation import answered_by_reference, course_function
from llmcourse.grading.marks import exercise_id_of, register_markers
from llmcourse.grading.sandbox import SANDBOXES, SandboxedImplementation
from llmcourse.impl import IMPL_ENV, SOLUTIONS, SolutionsMissing, resolve_impl

STUDENT_RELEASE = ("needs solutions/, which this student release does not have; run `llmcourse grade` to grade your "
                   "exercises")


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


# A student release (`llmcourse release --student`) has no solutions/: a test that reaches for it, at import (a test
# module taking the reference's functions), in a fixture (`--impl solutions`) or while it runs, is skipped saying
# why; any other error still fails.

def pytest_report_header(config: pytest.Config) -> str | None:
    return None if SOLUTIONS.is_dir() else f"no solutions/: {STUDENT_RELEASE}"


class _Module(pytest.Module):
    def _getobj(self):
        try:
            return super()._getobj()
        except SolutionsMissing:
            pytest.skip(STUDENT_RELEASE, allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent) -> pytest.Module | None:
    return None if SOLUTIONS.is_dir() else _Module.from_parent(parent, path=module_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(SolutionsMissing):
        report.outcome, report.longrepr = "skipped", (str(item.path), item.location[1], f"Skipped: {STUDENT_RELEASE}")
    return report


@pytest.fixture(scope="session")
def impl(pytestconfig: pytest.Config):
    """The implementation under test, run in a sandbox process (llmcourse.grading.sandbox): `impl.attention.softmax`
    calls the learner's function there with this test's arguments and brings the result back as data. Modules are
    imported inside each test, so one broken file fails only its own tests."""
    option = pytestconfig.getoption
    if option("--impl") == "solutions" and not SOLUTIONS.is_dir():
        pytest.skip("graded tests need solutions/: this is a student release; run `llmcourse grade` to grade your "
                    "exercises")
    implementation = SandboxedImplementation(
        resolve_impl(option("--impl")), sandbox=option("--sandbox"), timeout=option("--time-limit"),
        memory_mb=option("--memory-mb"), state_dir=option("--grader-state"),
        answer=lambda module, function: course_function(f"{module}.{function}"))
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
