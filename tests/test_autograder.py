"""`llmcourse autograder`: Gradescope's bundle, unpacked the way Gradescope lays it out, grades submissions end to end.

Gradescope unzips the bundle into /autograder/source, puts the student's files in /autograder/submission and runs
run_autograder, which must write /autograder/results/results.json. Here /autograder is a folder of tmp_path
(AUTOGRADER_ROOT) and the Python is this one (LLMCOURSE_PYTHON) instead of the venv setup.sh would build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llmcourse.cli import main
from llmcourse.course import catalog
from llmcourse.course.grading.autograder import build_bundle
from llmcourse.course.grading.sandbox import bubblewrap_problem
from llmcourse.course.impl import solutions_folder
from llmcourse.files import COURSE_ROOT

pytestmark = pytest.mark.slow
solutions_folder()  # grading the course's own folders needs the reference answers: a student release skips this module

# A hostile warm-up, appended to the stub so that what it defines wins: at import, it overwrites Gradescope's
# results with full marks, and takes the reference answer from the bundle and runs it.
HOSTILE = '''

try:
    with open({results!r}, "w") as fh:
        fh.write('{{"score": 1000.0, "tests": []}}')
except Exception:
    pass
try:
    with open({solution!r}) as fh:
        exec(fh.read())
except Exception:
    pass
'''


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "autograder.zip")


def _course_tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.py")}


def _gradescope_layout(tmp_path: Path, bundle: Path) -> Path:
    """/autograder as Gradescope makes it: source/ (the bundle, unzipped), submission/, results/."""
    root = tmp_path / "autograder"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(root / "source")
    (root / "submission").mkdir()
    (root / "results").mkdir()
    return root


def _run_autograder(root: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    environment = dict(os.environ, AUTOGRADER_ROOT=str(root), LLMCOURSE_PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder"), *args], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=600)
    results = root / "results" / "results.json"
    assert results.exists(), proc.stdout + proc.stderr
    return proc, json.loads(results.read_text())


def test_bundle_holds_what_grading_needs_and_nothing_else(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = set(infos)
        assert {"setup.sh", "run_autograder", "pyproject.toml", "README.md", "tests/conftest.py",
                "llmcourse/cli.py", "llmcourse/course/grading/runner.py"} <= names
        assert (infos["run_autograder"].external_attr >> 16) & 0o111 == 0o111, "run_autograder is not executable"
        for name in names:
            parts = name.split("/")
            assert not name.endswith((".ipynb", ".pyc")) and "__pycache__" not in parts and ".venv" not in parts, name
            assert parts[0] in ("setup.sh", "run_autograder", "pyproject.toml", "README.md", "llmcourse",
                                "tests", "solutions"), name
            assert parts[0] != "tests" or name == "tests/conftest.py" or parts[1] == "graded", name
        # The instructor's bundle: the course's own reference answers, byte for byte, and its graded tests.
        solutions = {name.split("/", 1)[1]: archive.read(name) for name in names if name.startswith("solutions/")}
        graded = {name.split("/", 2)[2]: archive.read(name) for name in names if name.startswith("tests/graded/")}
        scripts = {name: archive.read(name) for name in ("setup.sh", "run_autograder")}
    assert solutions == _course_tree(COURSE_ROOT / "solutions")
    assert graded == _course_tree(COURSE_ROOT / "tests" / "graded")
    for name, text in scripts.items():
        (tmp_path / name).write_bytes(text)
        check = subprocess.run(["bash", "-n", str(tmp_path / name)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"
    assert build_bundle(tmp_path / "again.zip").read_bytes() == bundle.read_bytes(), "the same course, another zip"


def test_cli_writes_the_bundle_and_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "out" / "autograder.zip"
    assert main(["autograder", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "Gradescope" in printed
    assert zipfile.is_zipfile(out)


def test_solutions_in_an_uploaded_folder_get_full_marks(bundle, tmp_path):
    root = _gradescope_layout(tmp_path, bundle)
    # Uploaded as a folder: the .py files are in the submission's only sub-folder.
    shutil.copytree(COURSE_ROOT / "solutions", root / "submission" / "solutions",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc, results = _run_autograder(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(ex.points for ex in catalog.EXERCISES)
    assert results["score"] == total, results["output"]
    assert len(results["tests"]) == len(catalog.EXERCISES)
    assert all(t["status"] == "passed" and t["score"] == t["max_score"] for t in results["tests"]), results["tests"]


def test_exercises_get_zero_and_a_zero_exit_code(bundle, tmp_path):
    root = _gradescope_layout(tmp_path, bundle)
    for path in (COURSE_ROOT / "exercises").glob("*.py"):
        shutil.copy(path, root / "submission" / path.name)
    only = ["warmup_mean_squared_error", "softmax"]  # in catalog order; the full course is graded above
    proc, results = _run_autograder(root, "--only", *only)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # lost points are a grade, not a broken autograder
    assert results["score"] == 0
    assert [t["name"].split(":")[0] for t in results["tests"]] == only
    assert all(t["status"] == "failed" and t["output"].startswith("not implemented") for t in results["tests"])


def test_hostile_submission_gets_zero_and_cannot_touch_results_or_solutions(bundle, tmp_path):
    problem = bubblewrap_problem()
    if problem is not None:
        pytest.skip(f"needs the sandbox: {problem}")
    root = _gradescope_layout(tmp_path, bundle)
    results_file, solution = root / "results" / "results.json", root / "source" / "solutions" / "warmup.py"
    for path in (COURSE_ROOT / "exercises").glob("*.py"):
        shutil.copy(path, root / "submission" / path.name)
    warmup = root / "submission" / "warmup.py"
    warmup.write_text(warmup.read_text() + HOSTILE.format(results=str(results_file), solution=str(solution)))

    # Outside the sandbox the attack works: it writes the results and gets the reference answer.
    probe = subprocess.run([sys.executable, "-c", "import runpy, sys; "
                            "print(runpy.run_path(sys.argv[1])['mean_squared_error']([1.0], [3.0]))", str(warmup)],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "4.0", probe.stdout + probe.stderr
    assert json.loads(results_file.read_text())["score"] == 1000.0
    results_file.unlink()

    proc, results = _run_autograder(root, "--only", "warmup_mean_squared_error", LLMCOURSE_REQUIRE_SANDBOX="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results["score"] == 0, results
    [test] = results["tests"]
    assert test["status"] == "failed" and test["output"].startswith("not implemented"), test
    assert "not sandboxed" not in results["output"]
