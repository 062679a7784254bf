"""The grader: runs the course's graded tests against an implementation and scores each exercise.

The tests always come from the course (tests/graded/), never from the submission. The submission is copied to a
temporary folder first, so its files stay byte-identical whatever its code does. Learners' code runs under pytest
in worker processes (pytest-xdist), so a crash (`os._exit`, a segfault) costs one test and the worker is replaced;
pytest-timeout's signal method fails a test that hangs; an address-space cap turns runaway allocation into a
MemoryError in that test. The rubric (test id -> exercise) is written when the tests are collected, before any
learner code runs, so even a test whose report was lost is scored, as crashed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmcourse import catalog
from llmcourse.impl import COURSE_ROOT, resolve_impl

GRADED_TESTS = COURSE_ROOT / "tests" / "graded"
DEFAULT_TIMEOUT = 30.0  # seconds per test; every reference test takes well under one
DEFAULT_MEMORY_MB = 4096  # per worker: numpy and torch need well under 1 GiB for any graded test
# The whole run's limit is RUN_LIMIT + 10 x the per-test time-out: it only matters when a test hangs where
# pytest-timeout's signal cannot reach (inside C code); tests still unfinished then are reported as timed out.
RUN_LIMIT = 300.0

# What a failing test says, most telling first: the exercise shows the first of these among its tests.
_SEVERITY = ("import_error", "crashed", "timeout", "not_implemented", "failed")
_STATUS = {"import_error": "does not import", "crashed": "crashed", "timeout": "timed out",
           "not_implemented": "not implemented", "failed": "failed"}


class GraderError(RuntimeError):
    """The grader itself could not run (not the learner's fault): exit code 2."""


@dataclass
class ExerciseResult:
    id: str
    title: str
    points: float
    max_points: float
    status: str  # passed | not implemented | failed | timed out | crashed | does not import
    message: str = ""
    tests: list[dict] = field(default_factory=list)  # {"name", "passed", "kind", "message"} per test

    @property
    def status_line(self) -> str:
        return f"{self.status}: {self.message}" if self.message and self.status in ("failed", "does not import") \
            else self.status


@dataclass
class GradeReport:
    implementation: str
    exercises: list[ExerciseResult]
    execution_time: float
    error: str | None = None  # set when the grader could not run

    @property
    def total(self) -> float:
        return round(sum(ex.points for ex in self.exercises), 2)

    @property
    def max_total(self) -> float:
        return round(sum(ex.max_points for ex in self.exercises), 2)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 0 if all(ex.status == "passed" for ex in self.exercises) else 1

    def to_json(self) -> dict:
        return {
            "implementation": self.implementation,
            "total": self.total,
            "max_total": self.max_total,
            "error": self.error,
            "exercises": [{k: v for k, v in asdict(ex).items() if k != "tests"} for ex in self.exercises],
        }


def _pytest_command(tests: list[Path], impl_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *map(str, tests), "-p", "llmcourse.grading.plugin", "--impl", str(impl_dir),
            "--rootdir", str(COURSE_ROOT), "-c", str(COURSE_ROOT / "pyproject.toml"), "-q", "--no-header",
            "-p", "no:cacheprovider", *extra]


def _marker_expression(only: list[str] | None) -> list[str]:
    if not only:
        return []
    for exercise_id in only:
        catalog.get(exercise_id)
    return ["-m", " or ".join(only)]


def _test_paths(tests: Path, only: list[str] | None) -> list[Path]:
    """Where the tests of `only` are: tests/graded/test_<module>.py by convention, so grading one exercise does not
    import every chapter's tests; the whole folder when that file is missing or nothing is singled out."""
    if not only:
        return [tests]
    files = sorted({tests / f"test_{catalog.get(exercise_id).module}.py" for exercise_id in only})
    return files if all(f.exists() for f in files) else [tests]


def _environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    # One thread per worker: the workers already use the cores, and oversubscription only slows them down.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("LLMCOURSE_IMPL", None)
    return env


def _run(command: list[str], cwd: Path, timeout: float) -> tuple[int | None, str]:
    """Run a command in its own process group; on time-out kill the whole group and return None as its code."""
    with subprocess.Popen(command, cwd=cwd, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return None, output


def _read_rubric(workdir: Path, output: str, code: int | None) -> dict:
    """{test id: exercise id} as the workers collected it (every worker writes the same rubric)."""
    files = sorted(workdir.glob("rubric.json*"))
    if not files:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise GraderError(f"pytest could not collect the graded tests (exit {code}):\n{tail}")
    rubric = json.loads(files[0].read_text())
    if not rubric:
        raise GraderError("no graded tests were collected")
    return rubric


def _test_outcomes(results_file: Path) -> dict[str, dict]:
    """{test id: {"passed": bool, "kind": str, "message": str}} from the JSON lines the plugin wrote."""
    outcomes: dict[str, dict] = {}
    if not results_file.exists():
        return outcomes
    for line in results_file.read_text().splitlines():
        record = json.loads(line)
        nodeid = record["nodeid"]
        current = outcomes.setdefault(nodeid, {"passed": True, "kind": "", "message": "", "ran": False})
        if record["when"] == "call":
            current["ran"] = True
        if record["outcome"] == "skipped" and record["when"] in ("setup", "call"):
            current.update(passed=False, kind="failed", message="the test was skipped")
        if record["outcome"] == "failed" and current["passed"]:
            verdict = record.get("verdict")
            if verdict:
                current.update(passed=False, kind=verdict["kind"], message=verdict["message"])
            else:  # a report pytest-xdist made for a crashed worker
                current.update(passed=False, kind="crashed", message="the test process died while running it "
                               "(os._exit, a segfault or the operating system killed it)")
    return outcomes


def _score(rubric: dict, outcomes: dict, time_limit_hit: bool) -> list[ExerciseResult]:
    by_exercise: dict[str, list[str]] = {}
    for nodeid, exercise_id in rubric.items():
        by_exercise.setdefault(exercise_id, []).append(nodeid)
    results = []
    for ex in catalog.EXERCISES:
        nodeids = by_exercise.get(ex.id)
        if not nodeids:
            continue
        tests = []
        for nodeid in nodeids:
            outcome = outcomes.get(nodeid)
            if outcome is None or not outcome["ran"] and outcome["passed"]:
                kind = "timeout" if time_limit_hit else "crashed"
                outcome = {"passed": False, "kind": kind,
                           "message": "the grading run was stopped before this test finished" if time_limit_hit
                           else "no result was reported for this test"}
            tests.append({"name": nodeid.split("::")[-1], "passed": outcome["passed"], "kind": outcome["kind"],
                          "message": outcome["message"]})
        passed = sum(t["passed"] for t in tests)
        points = round(ex.points * passed / len(tests), 2)
        failing = sorted((t for t in tests if not t["passed"]), key=lambda t: _SEVERITY.index(t["kind"]))
        if failing:
            status, message = _STATUS[failing[0]["kind"]], failing[0]["message"]
        else:
            status, message = "passed", ""
        results.append(ExerciseResult(ex.id, ex.title, points, ex.points, status, message, tests))
    return results


def grade(impl: str | os.PathLike = "exercises", *, only: list[str] | None = None,
          timeout: float = DEFAULT_TIMEOUT, workers: int = 2, memory_mb: int = DEFAULT_MEMORY_MB,
          tests: Path | None = None, own_dependencies: bool = False) -> GradeReport:
    """Grade an implementation ("exercises", "solutions" or a folder laid out like exercises/).

    Each exercise is graded on its own code: the other exercises it calls are the reference's, unless
    `own_dependencies` (the exercise loader's question: does it work with the learner's code throughout?).

    Never raises for a learner's mistake; a problem of the grader itself is returned as `report.error`.
    """
    start = time.perf_counter()
    label = str(impl)
    tests = GRADED_TESTS if tests is None else tests
    try:
        source = resolve_impl(impl)
        if not tests.is_dir():
            raise GraderError(f"the course's graded tests are missing: {tests} does not exist")
        with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as tmp:
            workdir = Path(tmp)
            impl_dir = workdir / "implementation"
            # Grade a copy: the learner's files are never touched, whatever their code does.
            shutil.copytree(source, impl_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            results_file = workdir / "results.jsonl"
            code, output = _run(_pytest_command(
                _test_paths(tests, only), impl_dir, "--llmcourse-results", str(results_file),
                "--llmcourse-rubric", str(workdir / "rubric.json"), "--llmcourse-memory-mb", str(memory_mb),
                "-n", str(workers), "--max-worker-restart", "1000", "--timeout", str(timeout),
                "--timeout-method", "signal", *_marker_expression(only),
                *(["--own-dependencies"] if own_dependencies else []),
            ), workdir, timeout=RUN_LIMIT + 10 * timeout)
            rubric = _read_rubric(workdir, output, code)
            if code not in (0, 1, None):
                tail = "\n".join(output.strip().splitlines()[-15:])
                raise GraderError(f"pytest could not run the graded tests (exit {code}):\n{tail}")
            exercises = _score(rubric, _test_outcomes(results_file), time_limit_hit=code is None)
        return GradeReport(label, exercises, time.perf_counter() - start)
    except (GraderError, FileNotFoundError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        return GradeReport(label, [], time.perf_counter() - start, error=message)


def format_table(report: GradeReport) -> str:
    """The grade table a learner reads."""
    if report.error is not None:
        return f"The grader could not run: {report.error}"
    width = max([len(ex.id) for ex in report.exercises] + [8])
    title_width = max([len(ex.title) for ex in report.exercises] + [5])
    lines = [f"{'exercise':<{width}}  {'title':<{title_width}}  {'points':>11}  status",
             f"{'-' * width}  {'-' * title_width}  {'-' * 11}  {'-' * 6}"]
    for ex in report.exercises:
        lines.append(f"{ex.id:<{width}}  {ex.title:<{title_width}}  {ex.points:>5g} / {ex.max_points:<3g}  "
                     f"{ex.status_line}")
    lines.append(f"{'total':<{width}}  {'':<{title_width}}  {report.total:>5g} / {report.max_total:<3g}  "
                 f"({report.execution_time:.1f} s)")
    return "\n".join(lines)


def gradescope_results(report: GradeReport) -> dict:
    """Gradescope's results.json for this report."""
    if report.error is not None:
        return {"score": 0.0, "execution_time": round(report.execution_time, 1),
                "output": "The autograder could not run; please tell your instructor.",
                "tests": [{"name": "Autograder", "number": "0", "score": 0.0, "max_score": 0.0, "status": "failed",
                           "output": f"The grader could not run: {report.error}", "visibility": "visible"}]}
    tests = []
    for number, ex in enumerate(report.exercises, start=1):
        details = "\n".join(f"{'PASS' if t['passed'] else 'FAIL'} {t['name']}" +
                            ("" if t["passed"] else f": {_STATUS[t['kind']]}: {t['message']}") for t in ex.tests)
        tests.append({"name": f"{ex.id}: {ex.title}", "number": str(number), "score": ex.points,
                      "max_score": ex.max_points, "status": "passed" if ex.status == "passed" else "failed",
                      "output": f"{ex.status_line}\n\n{details}", "visibility": "visible"})
    return {"score": report.total, "execution_time": round(report.execution_time, 1),
            "output": f"{report.total:g} / {report.max_total:g} points", "tests": tests}
