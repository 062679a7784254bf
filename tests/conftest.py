"""Shared by every test: the --impl option that picks what the graded tests run against, and its fixture; the
notebooks executed once per run, and the book built from them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so the suite is deterministic (CI and a learner see the same
# result); `pytest --hypothesis-profile=explore` searches new examples when developing.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("deterministic")

from llmcourse.course.grading.isolation import answered_by_reference, course_function
from llmcourse.course.grading.marks import exercise_id_of, register_markers
from llmcourse.course.grading.sandbox import SANDBOXES, SandboxedImplementation
from llmcourse.course.impl import IMPL_ENV, SOLUTIONS, SolutionsMissing, resolve_impl

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
    """The implementation under test, run in a sandbox process (llmcourse.course.grading.sandbox):
    `impl.attention.softmax` calls the learner's function there with this test's arguments and brings the result back
    as data. Modules are imported inside each test, so one broken file fails only its own tests."""
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
    (llmcourse.course.grading.isolation)."""
    exercise_id = exercise_id_of(request.node)
    if exercise_id is None:
        return
    request.getfixturevalue("impl").begin_test(answered_by_reference(exercise_id),
                                               substitute=not request.config.getoption("--own-dependencies"))


# Notebooks are executed once per test run, however many tests and test processes (pytest-xdist's workers) use
# them: tests/test_notebooks.py checks each one for errors, and the book's tests build the book from the same runs.

class NotebookRuns:
    """Each notebook executed once per run (LLMCOURSE_FAST=1) and kept in `folder`. A file lock per notebook makes a
    process that asks for a notebook another one is executing wait for it, instead of executing it again."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _lock(self, path: Path, timeout: float = -1):
        from filelock import FileLock
        return FileLock(self.folder / f"{path.stem}.lock", timeout=timeout)

    def _load_or_execute(self, path: Path):  # with the notebook's lock held
        import nbformat

        from llmcourse.course.notebooks import ExecutedNotebook, execute
        saved, seconds = self.folder / path.name, self.folder / f"{path.stem}.seconds"
        if seconds.exists():  # written last
            return ExecutedNotebook(path, nbformat.read(saved, as_version=4), float(seconds.read_text()))
        result = execute(path, fast=True)
        nbformat.write(result.notebook, saved)
        seconds.write_text(repr(result.seconds))
        return result

    def get(self, path: Path):
        """The executed notebook (an llmcourse.course.notebooks.ExecutedNotebook)."""
        with self._lock(path):
            return self._load_or_execute(path)

    def get_all(self, paths: list[Path]) -> list:
        """Every one of them, in order; those no other process is executing are taken first."""
        from filelock import Timeout
        done = {}
        while len(done) < len(paths):
            waiting = True
            for path in (p for p in paths if p not in done):
                try:
                    with self._lock(path, timeout=0):
                        done[path] = self._load_or_execute(path)
                        waiting = False
                except Timeout:
                    pass
            if waiting:
                time.sleep(0.5)
        return [done[path] for path in paths]


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder that every test process of this run shares (pytest-xdist's workers have their temporary folders
    in one folder per run)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def notebook_runs(run_folder: Path) -> NotebookRuns:
    folder = run_folder / "notebooks"
    folder.mkdir(exist_ok=True)
    return NotebookRuns(folder)


@dataclass
class BuiltBook:
    site: Path  # its front page is site/index.html
    source: Path  # the Sphinx project it was built from
    warnings: list[str]  # Sphinx's


@pytest.fixture(scope="session")
def built_book(run_folder: Path, notebook_runs: NotebookRuns) -> BuiltBook:
    """The course's book (llmcourse.course.book), built once per run by the first process that asks, from the notebooks
    executed for the tests."""
    from filelock import FileLock

    from llmcourse.course.book import build_html, write_source
    from llmcourse.course.notebooks import notebook_paths
    site, source, warnings = run_folder / "book", run_folder / "book-source", run_folder / "book-warnings.txt"
    with FileLock(run_folder / "book.lock"):
        if not warnings.exists():  # written last
            write_source(notebook_runs.get_all(notebook_paths()), source, fast=True)
            warnings.write_text("\n".join(build_html(source, site)), encoding="utf-8")
    return BuiltBook(site, source, warnings.read_text(encoding="utf-8").splitlines())
