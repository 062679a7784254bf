"""The grader: runs the course's graded tests against an implementation and scores each exercise.

The tests always come from the course (tests/graded/), never from the submission, and run in a trusted pytest
process that computes and records every verdict. The learner's code runs elsewhere: in a sandbox process
(llmcourse.course.grading.sandbox, bubblewrap on Linux) that sees a validated copy of the submission and not the course,
the results or the network, and answers the tests' calls with data only. A crash, a hang or runaway allocation
there costs the test that met it. The rubric (test id -> exercise) is written when the tests are collected, so a
test whose report was lost is still scored. The results files are written by this process, atomically, after every
test process has ended.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmcourse.course import catalog
from llmcourse.course.grading.sandbox import SandboxUnavailable, bubblewrap_problem, resolve_sandbox
from llmcourse.course.impl import NAMED_IMPLEMENTATIONS, resolve_impl
from llmcourse.files import COURSE_ROOT

GRADED_TESTS = COURSE_ROOT / "tests" / "graded"
DEFAULT_TIMEOUT = 30.0  # seconds per test; every reference test takes well under one
DEFAULT_MEMORY_MB = 4096  # the sandbox's address space: numpy and torch need well under 1 GiB for any graded test
# The whole run's limit is RUN_LIMIT + 10 x the per-test time-out: it only matters when the trusted side hangs;
# tests still unfinished then are reported as timed out.
RUN_LIMIT = 300.0
MAX_FILE_BYTES = 2**20  # a submitted file larger than this is not graded
NOT_SANDBOXED = "not sandboxed: fine for self-study, not for grading a class"

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
    challenge: bool = False  # a challenge exercise (catalog.Exercise.challenge): harder, part of the total

    @property
    def shown_title(self) -> str:
        return f"{self.title} [challenge]" if self.challenge else self.title

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
    sandbox: str = "none"  # where the learner's code ran: bubblewrap | none
    notices: list[str] = field(default_factory=list)  # what the instructor should know: skipped files, no sandbox

    @property
    def total(self) -> float:
        return round(sum(ex.points for ex in self.exercises), 2)

    @property
    def max_total(self) -> float:
        return round(sum(ex.max_points for ex in self.exercises), 2)

    @property
    def challenge_total(self) -> float:
        """Points earned on the challenge exercises (already counted in `total`)."""
        return round(sum(ex.points for ex in self.exercises if ex.challenge), 2)

    @property
    def challenge_max_total(self) -> float:
        return round(sum(ex.max_points for ex in self.exercises if ex.challenge), 2)

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
            "challenge_total": self.challenge_total,
            "challenge_max_total": self.challenge_max_total,
            "error": self.error,
            "sandbox": self.sandbox,
            "notices": self.notices,
            "exercises": [{k: v for k, v in asdict(ex).items() if k != "tests"} for ex in self.exercises],
        }


def _pytest_command(tests: list[Path], impl_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *map(str, tests), "-p", "llmcourse.course.grading.plugin",
            "--impl", str(impl_dir), "--rootdir", str(COURSE_ROOT), "-c", str(COURSE_ROOT / "pyproject.toml"), "-q",
            "--no-header", "-p", "no:cacheprovider", *extra]


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
    """Run a command in its own process group, its output in a file (no pipe a leftover process could hold open);
    kill the whole group when it ends or at the time limit, when its code is None. Every wait has a bound."""
    with tempfile.TemporaryFile(dir=cwd) as log:
        proc = subprocess.Popen(command, cwd=cwd, env=_environment(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the run, at the end or at the limit
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=30)
        log.seek(0)
        return code, log.read().decode("utf-8", errors="replace")


def _read_rubric(workdir: Path, output: str, code: int | None) -> dict:
    """{test id: exercise id} as the workers collected it (every worker writes the same rubric)."""
    files = sorted(workdir.glob("rubric.json*"))
    if not files:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise GraderError(f"pytest could not collect the graded tests (exit {code}):\n{tail}")
    for file in files:  # every test process writes the same rubric: the first that reads as one will do
        try:
            rubric = json.loads(file.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(rubric, dict) and rubric and all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in rubric.items()):
            return rubric
    raise GraderError("no graded tests were collected")


def _test_outcomes(results_file: Path) -> dict[str, dict]:
    """{test id: {"passed": bool, "kind": str, "message": str}} from the JSON lines the plugin wrote."""
    outcomes: dict[str, dict] = {}
    if not results_file.exists():
        return outcomes
    for line in results_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            nodeid = record["nodeid"]
        except (ValueError, TypeError, KeyError):  # only the trusted controller writes here; never trust it blindly
            continue
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
        results.append(ExerciseResult(ex.id, ex.title, points, ex.points, status, message, tests, ex.challenge))
    return results


def check_options(timeout: float, workers: int, memory_mb: int) -> None:
    """Raise ValueError, in the user's terms, for limits that would not protect the run."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= 3600):
        raise ValueError(f"the time limit per test must be a number of seconds > 0 and at most 3600, not {timeout!r}")
    if not (isinstance(workers, int) and 1 <= workers <= 64):
        raise ValueError(f"the number of test processes must be a whole number from 1 to 64, not {workers!r}")
    if not (isinstance(memory_mb, int) and memory_mb >= 512):
        raise ValueError(f"the sandbox's memory must be at least 512 MB, not {memory_mb!r}")


def copy_submission(source: Path, target: Path) -> list[str]:
    """Copy the submission's top-level .py files into `target` (readable by the sandbox's user); return what was
    not copied and why. Nothing is followed: a symbolic link, a device, a pipe or an oversized file is reported,
    never read."""
    problems = []
    target.mkdir(mode=0o755)
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"{name.encode('utf-8', 'surrogateescape')!r}: a file name that is not UTF-8: "
                                "not graded")
                continue
            if name.startswith(".") or name == "__pycache__":
                continue
            if entry.is_symlink():
                problems.append(f"{name} is a symbolic link: not followed, not graded")
            elif entry.is_dir(follow_symlinks=False):
                problems.append(f"{name}/ is a folder: only the .py files at the top of the submission are graded")
            elif not entry.is_file(follow_symlinks=False):
                problems.append(f"{name} is not a regular file (a device, a pipe or a socket): not graded")
            elif name.endswith(".py"):
                size = entry.stat(follow_symlinks=False).st_size
                if size > MAX_FILE_BYTES:
                    problems.append(f"{name} is {size / 2**20:.1f} MB, more than the {MAX_FILE_BYTES // 2**20} MB "
                                    "a file may have: not graded")
                    continue
                descriptor = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
                with os.fdopen(descriptor, "rb") as fh:
                    data = fh.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    problems.append(f"{name} grew past {MAX_FILE_BYTES // 2**20} MB while it was read: not graded")
                    continue
                copy = target / name
                copy.write_bytes(data)
                copy.chmod(0o644)
    return problems


def grade(impl: str = "exercises", *, submission: str | os.PathLike | None = None, only: list[str] | None = None,
          timeout: float = DEFAULT_TIMEOUT, workers: int = 2, memory_mb: int = DEFAULT_MEMORY_MB,
          tests: Path | None = None, own_dependencies: bool = False, sandbox: str = "auto") -> GradeReport:
    """Grade the course's own "exercises" or "solutions" (`impl`), or a submission folder laid out like exercises/
    (`submission`, always a path: a folder called "exercises" in the current directory is that folder).

    Each exercise is graded on its own code: the earlier exercises it calls are answered by the reference, unless
    `own_dependencies` (the exercise loader's question: does it work with the learner's code throughout?).
    `sandbox`: "auto" (bubblewrap when it works here, else none, said in the report), "bubblewrap" (required), "none".

    Never raises for a learner's mistake; a problem of the grader itself is returned as `report.error`.
    """
    start = time.perf_counter()
    label = str(submission) if submission is not None else str(impl)
    tests = GRADED_TESTS if tests is None else tests
    notices: list[str] = []
    mode = "none"
    try:
        check_options(timeout, workers, memory_mb)
        if submission is not None:
            source = Path(submission).expanduser()
            if not source.is_dir():
                raise GraderError(f"the submission {str(source)!r} is " + ("a file, not a folder: give the folder "
                                  "that holds the learner's exercise files" if source.exists() else
                                  "not there: give the path of the learner's exercises folder"))
        elif impl in NAMED_IMPLEMENTATIONS:
            source = resolve_impl(impl)
        else:
            raise GraderError(f"--impl names the course's own folders ({', '.join(NAMED_IMPLEMENTATIONS)}); grade "
                              f"any other folder with --submission, not {impl!r}")
        if not tests.is_dir():
            raise GraderError(f"the course's graded tests are missing: {tests} does not exist")
        try:
            mode = resolve_sandbox(sandbox)
        except SandboxUnavailable as err:
            raise GraderError(f"a sandbox is required and {err}") from None
        if mode == "none":
            why = bubblewrap_problem() if sandbox == "auto" else "--sandbox none"
            notices.append(f"{NOT_SANDBOXED} ({why})")
        with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as tmp:
            workdir = Path(tmp)  # the sandbox sees only the copy of the submission in it
            workdir.chmod(0o711)  # enterable, not listable: the way to that copy for the worker's own user
            impl_dir = workdir / "submission"
            # Grade a copy: the learner's files are never touched, whatever their code does.
            notices += copy_submission(source, impl_dir)
            (workdir / "state").mkdir()
            results_file = workdir / "results.jsonl"
            code, output = _run(_pytest_command(
                _test_paths(tests, only), impl_dir, "--llmcourse-results", str(results_file),
                "--llmcourse-rubric", str(workdir / "rubric.json"), "--sandbox", mode, "--time-limit", str(timeout),
                "--memory-mb", str(memory_mb), "--grader-state", str(workdir / "state"),
                "-n", str(workers), "--max-worker-restart", "1000",
                # pytest-timeout only backs up the sandbox's own deadline, for a hang on the trusted side
                "--timeout", str(3 * timeout + 60), "--timeout-method", "signal", *_marker_expression(only),
                *(["--own-dependencies"] if own_dependencies else []),
            ), workdir, timeout=RUN_LIMIT + 10 * timeout)
            rubric = _read_rubric(workdir, output, code)
            if code not in (0, 1, None):
                tail = "\n".join(output.strip().splitlines()[-15:])
                raise GraderError(f"pytest could not run the graded tests (exit {code}):\n{tail}")
            exercises = _score(rubric, _test_outcomes(results_file), time_limit_hit=code is None)
        return GradeReport(label, exercises, time.perf_counter() - start, sandbox=mode, notices=notices)
    except (GraderError, ValueError, FileNotFoundError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        return GradeReport(label, [], time.perf_counter() - start, error=message, sandbox=mode, notices=notices)


def format_table(report: GradeReport) -> str:
    """The grade table a learner reads."""
    if report.error is not None:
        return f"The grader could not run: {report.error}"
    notices = "".join(f"note: {notice}\n" for notice in report.notices)
    width = max([len(ex.id) for ex in report.exercises] + [8])
    title_width = max([len(ex.shown_title) for ex in report.exercises] + [5])
    lines = [f"{'exercise':<{width}}  {'title':<{title_width}}  {'points':>11}  status",
             f"{'-' * width}  {'-' * title_width}  {'-' * 11}  {'-' * 6}"]
    for ex in report.exercises:
        lines.append(f"{ex.id:<{width}}  {ex.shown_title:<{title_width}}  {ex.points:>5g} / {ex.max_points:<3g}  "
                     f"{ex.status_line}")
    challenges = (f"{report.challenge_total:g} / {report.challenge_max_total:g} of it from challenges; "
                  if report.challenge_max_total else "")
    lines.append(f"{'total':<{width}}  {'':<{title_width}}  {report.total:>5g} / {report.max_total:<3g}  "
                 f"({challenges}{report.execution_time:.1f} s)")
    return notices + "\n".join(lines)


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
        tests.append({"name": f"{ex.id}: {ex.shown_title}", "number": str(number), "score": ex.points,
                      "max_score": ex.max_points, "status": "passed" if ex.status == "passed" else "failed",
                      "output": f"{ex.status_line}\n\n{details}", "visibility": "visible"})
    notices = "".join(f"\n{notice}" for notice in report.notices)
    return {"score": report.total, "execution_time": round(report.execution_time, 1),
            "output": f"{report.total:g} / {report.max_total:g} points{_challenge_note(report)}{notices}",
            "tests": tests}


def _challenge_note(report: GradeReport) -> str:
    if not report.challenge_max_total:
        return ""
    return f" ({report.challenge_total:g} / {report.challenge_max_total:g} of them from challenge exercises)"
