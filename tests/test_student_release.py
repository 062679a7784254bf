"""`llmcourse release --student OUT`: a whole course for a class, with no answer in it, whose tests and notebooks run.

The full `make test` in OUT takes as long as the course's own; this runs a fast subset there: the package's tests
that need no solutions/, the skip of the graded tests, and one notebook headless.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmcourse.cli import main
from llmcourse.course.impl import solutions_folder
from llmcourse.course.release import course_files, leaks, solution_lines

pytestmark = pytest.mark.slow
HELD_OUT = "tests/graded/test_training.py"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    solutions_folder()  # a student release cannot make another
    folder = tmp_path_factory.mktemp("release") / "course"
    assert main(["release", "--student", str(folder), "--hold-out", HELD_OUT]) == 0
    return folder


def _run(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Python in OUT, importing OUT's own llmcourse (not this checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(out), "OMP_NUM_THREADS": "1"}
    env.pop("LLMCOURSE_IMPL", None)
    return subprocess.run([sys.executable, *args], cwd=out, env=env, capture_output=True, text=True, timeout=timeout)


def test_no_solution_line_is_in_any_file(out):
    lines = solution_lines()
    assert len(lines) > 100  # the check has something to find
    found = leaks(out, lines)
    assert not found, "solution code in the student release:\n" + "\n".join(found[:20])


def test_the_course_is_there_without_solutions_and_the_held_out_files(out):
    assert not (out / "solutions").exists()
    assert not (out / HELD_OUT).exists() and (out / "tests" / "graded" / "test_attention.py").is_file()
    expected = {path for path in course_files() if path.parts[0] != "solutions" and path.as_posix() != HELD_OUT}
    assert expected <= {path.relative_to(out) for path in out.rglob("*") if path.is_file()}
    readme = (out / "README.md").read_text()
    assert "make lab" in readme and "llmcourse grade" in readme and "instructor" not in readme.lower()
    assert "NotImplementedError" in (out / "exercises" / "attention.py").read_text()


def test_an_existing_folder_is_refused(out, capsys):
    assert main(["release", "--student", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


def test_the_package_tests_pass_and_the_graded_tests_say_why_they_skip(out):
    tests = ["tests/test_package_stands_alone.py", "tests/test_loader.py", "tests/test_tokenizer.py",
             "tests/test_wire.py", "tests/test_release.py", "tests/graded/test_attention.py"]
    proc = _run(out, "-m", "pytest", "-q", "-rs", "-m", "not slow", "--impl", "solutions", "-p", "no:cacheprovider",
                *tests, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "graded tests need solutions/: this is a student release; run `llmcourse grade`" in proc.stdout
    assert " passed" in proc.stdout


def test_a_notebook_runs_on_the_stubs(out):
    script = ("from pathlib import Path; from llmcourse.course import execute; "
              "r = execute(Path('notebooks/02_self_attention.ipynb'), fast=True); print(r.errors); "
              "print(*(o.get('text', '') for c in r.notebook.cells for o in c.get('outputs', [])))")
    proc = _run(out, "-c", script, timeout=900)
    assert proc.returncode == 0 and proc.stdout.startswith("[]\n"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("softmax: using the course's implementation (yours is not implemented yet: exercise `softmax` in "
            "exercises/attention.py)") in proc.stdout


def test_grading_works_in_the_release(out, tmp_path):
    """Without solutions/, calls to earlier exercises are answered by the course's own implementations (tested
    equal to the reference), so correct code gets full marks: here the exercises that call earlier ones, in place
    writers, and a test that passes the course's multi-head attention into the learner's block."""
    import shutil
    submission = tmp_path / "submission"
    shutil.copytree(solutions_folder(), submission)
    only = ["causal_attention", "cross_entropy_backward", "block_forward", "load_weights", "cache_append",
            "cached_attention"]  # (training_step's tests are held out of this release)
    proc = _run(out, "-m", "llmcourse", "grade", "--submission", str(submission), "--only", *only, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "12 / 12" in proc.stdout, proc.stdout
