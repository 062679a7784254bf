"""pytest plugin used by the grader (`-p llmcourse.course.grading.plugin`): records each test's outcome as a JSON line.

Workers classify a failure while the exception is still at hand (not implemented, does not import, timed out,
failed) and attach the verdict to the report; the controller writes every report it receives, including the ones
pytest-xdist makes up for a test whose worker crashed. Each worker also writes the rubric (test id -> exercise) as
soon as it has collected, before any learner code runs, so a test whose report was lost is still scored by its id.
"""

from __future__ import annotations

import json

import pytest

from llmcourse.course.grading.marks import exercise_id_of
from llmcourse.course.grading.sandbox import SandboxCrash, SandboxTimeout
from llmcourse.course.impl import ImplementationImportError

VERDICT = "llmcourse_verdict"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmcourse grader")
    group.addoption("--llmcourse-results", default=None, help="append one JSON line per test report to this file")
    group.addoption("--llmcourse-rubric", default=None, help="write {test id: exercise id} of the collected tests")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--llmcourse-results")
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_ResultWriter(path), "llmcourse-result-writer")


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def classify(excinfo: pytest.ExceptionInfo) -> tuple[str, str]:
    """(kind, one-line message) of a test's failure."""
    err = excinfo.value
    if isinstance(err, ImplementationImportError):
        return "import_error", first_line(str(err))
    if isinstance(err, NotImplementedError):
        return "not_implemented", first_line(str(err)) or "raises NotImplementedError"
    message = first_line(str(err))
    if isinstance(err, SandboxTimeout) or message.startswith("Timeout (>") and "pytest-timeout" in message:
        return "timeout", message
    if isinstance(err, SandboxCrash):
        return "crashed", message
    if isinstance(err, MemoryError):
        return "failed", "ran out of memory (MemoryError): is an array much larger than it should be?"
    if isinstance(err, AssertionError):
        return "failed", message or "an assertion failed"
    if isinstance(err, pytest.fail.Exception):
        return "failed", message
    return "failed", f"raised {type(err).__name__}" + (f": {message}" if message else "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        kind, message = classify(call.excinfo)
        report.user_properties.append((VERDICT, {"kind": kind, "message": message}))


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("--llmcourse-rubric")
    if path:  # session.items: what is left after `-m` deselected the other exercises
        worker = getattr(session.config, "workerinput", {}).get("workerid")
        path = f"{path}.{worker}" if worker else path  # every worker collects the same tests
        rubric = {item.nodeid: exercise_id_of(item) for item in session.items}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({nodeid: ex for nodeid, ex in rubric.items() if ex}, fh)


class _ResultWriter:
    def __init__(self, path: str):
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        verdict = dict(report.user_properties).get(VERDICT)
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "verdict": verdict}
        if report.failed and verdict is None:  # e.g. xdist's report for a crashed worker
            record["text"] = first_line(str(report.longrepr))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
