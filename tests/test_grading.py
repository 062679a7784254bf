"""The grader survives a learner's code: hanging, crashing, broken or greedy exercises cost only their own points.

These tests grade small synthetic submissions against small synthetic graded tests (in tmp_path, with the
course's conftest), so they do not depend on the content of any chapter. The real solutions and stubs are graded in
test_grading_course.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmcourse.course import catalog
from llmcourse.course.grading.runner import format_table, grade, gradescope_results
from llmcourse.course.impl import solutions_folder
from llmcourse.files import COURSE_ROOT

pytestmark = pytest.mark.slow

# Each synthetic exercise borrows a real catalog id (graded tests must name one); the functions are invented.
GRADED_TESTS = '''
from llmcourse.course.grading import exercise

@exercise("warmup_mean_squared_error")
def test_fine(impl):
    assert impl.good.add(2, 3) == 5, "add(2, 3) should be 5"

@exercise("warmup_mean_squared_error")
def test_fine_again(impl):
    assert impl.good.add(-1, 1) == 0, "add(-1, 1) should be 0"

@exercise("softmax")
def test_hangs(impl):
    impl.hangs.forever()

@exercise("causal_attention")
def test_syntax_error(impl):
    impl.broken.anything()

@exercise("top_k")
def test_exits(impl):
    impl.exits.leave()

@exercise("top_k")
def test_exits_again(impl):
    impl.exits.leave()

@exercise("top_p")
def test_greedy(impl):
    impl.greedy.allocate()

@exercise("temperature")
def test_wrong(impl):
    assert impl.good.add(1, 1) == 3, "add(1, 1) should be 3 in this made-up test"

@exercise("beam_step")
def test_stub(impl):
    impl.good.stub()

@exercise("multihead_attention")
def test_raises(impl):
    impl.good.raises()
'''

SUBMISSION = {
    "good.py": '''
        def add(a, b):
            return a + b

        def stub():
            raise NotImplementedError("beam_step: beam_step is not implemented yet; write your code here")

        def raises():
            return [1, 2][5]
    ''',
    "hangs.py": '''
        def forever():
            while True:
                pass
    ''',
    "broken.py": '''
        def anything(:
            return 1
    ''',
    "exits.py": '''
        import os

        def leave():
            os._exit(1)
    ''',
    "greedy.py": '''
        import numpy as np

        def allocate():
            chunks = []
            while True:
                chunks.append(np.zeros(32 * 1024 * 1024))  # 256 MiB more each time
    ''',
}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def course_tests(tmp_path: Path) -> Path:
    tests = tmp_path / "graded"
    tests.mkdir()
    shutil.copy(COURSE_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_synthetic.py").write_text(GRADED_TESTS)
    return tests


@pytest.fixture
def submission(tmp_path: Path) -> Path:
    folder = tmp_path / "submission"
    folder.mkdir()
    for name, source in SUBMISSION.items():
        (folder / name).write_text(textwrap.dedent(source))
    return folder


def test_hostile_submission_is_graded_to_the_end(course_tests, submission):
    before = _tree_digest(submission)
    report = grade(submission=submission, tests=course_tests, timeout=3, memory_mb=1024)
    assert _tree_digest(submission) == before, "grading changed or added files in the submission"
    assert report.error is None, report.error
    by_id = {ex.id: ex for ex in report.exercises}
    expected = {
        "warmup_mean_squared_error": "passed",
        "softmax": "timed out",
        "causal_attention": "does not import",
        "top_k": "crashed",
        "top_p": "failed",
        "temperature": "failed",
        "beam_step": "not implemented",
        "multihead_attention": "failed",
    }
    assert {k: ex.status for k, ex in by_id.items()} == expected, format_table(report)
    assert by_id["warmup_mean_squared_error"].points == by_id["warmup_mean_squared_error"].max_points
    assert all(ex.points == 0 for key, ex in by_id.items() if key != "warmup_mean_squared_error")
    assert "line 2" in by_id["causal_attention"].message and "SyntaxError" in by_id["causal_attention"].message
    assert "MemoryError" in by_id["top_p"].message or "memory" in by_id["top_p"].message
    assert by_id["temperature"].message == "add(1, 1) should be 3 in this made-up test"
    assert by_id["multihead_attention"].message == "raised IndexError: list index out of range"
    assert report.exit_code == 1


def test_gradescope_and_json_files_are_written_by_the_cli(course_tests, submission, tmp_path, monkeypatch):
    # The CLI grades against the course's tests; point the runner at the synthetic ones for this test.
    import llmcourse.course.grading.runner as runner
    monkeypatch.setattr(runner, "GRADED_TESTS", course_tests)
    from llmcourse.cli import main

    results, gradescope = tmp_path / "out" / "grade.json", tmp_path / "out" / "results.json"
    code = main(["grade", "--submission", str(submission), "--json", str(results), "--gradescope", str(gradescope),
                 "--timeout", "3", "--only", "warmup_mean_squared_error", "top_k", "beam_step"])
    assert code == 1
    data = json.loads(results.read_text())
    assert set(data) >= {"total", "max_total", "exercises"}
    assert [(e["id"], e["status"]) for e in data["exercises"]] == [
        ("warmup_mean_squared_error", "passed"), ("top_k", "crashed"), ("beam_step", "not implemented")]
    assert data["total"] == 1.0 and data["max_total"] == sum(
        catalog.get(key).points for key in ("warmup_mean_squared_error", "top_k", "beam_step"))
    gs = json.loads(gradescope.read_text())
    assert gs["score"] == 1.0
    assert [t["status"] for t in gs["tests"]] == ["passed", "failed", "failed"]
    assert all(set(t) >= {"name", "number", "score", "max_score", "status", "output", "visibility"}
               for t in gs["tests"])


def test_grader_error_is_reported_not_raised(tmp_path):
    report = grade(submission=tmp_path / "does-not-exist")
    assert report.exit_code == 2
    assert "does-not-exist' is not there" in report.error
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert "a file, not a folder" in grade(submission=tmp_path / "notes.txt").error
    results = gradescope_results(report)
    assert results["score"] == 0 and len(results["tests"]) == 1
    assert "could not run" in results["tests"][0]["output"]


def test_cli_exit_code_2_when_the_grader_cannot_run(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "llmcourse", "grade", "--submission", str(tmp_path / "missing"),
                           "--gradescope", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not run" in proc.stdout
    assert json.loads(out.read_text())["score"] == 0


@pytest.mark.parametrize("option, value", [("--timeout", "0"), ("--timeout", "nan"), ("--timeout", "-3"),
                                           ("--timeout", "inf"), ("--workers", "0"), ("--workers", "1.5"),
                                           ("--impl", "some/folder")])
def test_grade_options_that_would_not_protect_the_run_are_refused(option, value, capsys):
    from llmcourse.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["grade", option, value])
    assert stop.value.code == 2
    assert option in capsys.readouterr().err


def test_grade_refuses_bad_limits_without_running_anything():
    for kwargs in ({"timeout": 0}, {"timeout": float("nan")}, {"workers": 0}, {"memory_mb": 10}):
        report = grade("solutions", **kwargs)
        assert report.exit_code == 2 and report.exercises == [], kwargs


def test_a_submission_is_always_a_path(tmp_path, monkeypatch):
    """`--submission exercises` grades ./exercises, not the course's own stubs."""
    shutil.copytree(solutions_folder(), tmp_path / "exercises")
    monkeypatch.chdir(tmp_path)
    report = grade(submission="exercises", only=["warmup_mean_squared_error"])
    assert report.error is None and report.total == report.max_total, format_table(report)


def test_the_submission_is_validated_before_it_is_copied(tmp_path):
    from llmcourse.course.grading.runner import MAX_FILE_BYTES, copy_submission

    source = tmp_path / "submission"
    source.mkdir()
    (source / "warmup.py").write_text("x = 1\n")
    (source / "notes.txt").write_text("not code: left out quietly\n")
    (source / "attention.py").symlink_to(COURSE_ROOT / "solutions" / "attention.py")
    (source / "big.py").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    (source / "data").mkdir()
    os.mkfifo(source / "pipe.py")
    (source / os.fsdecode(b"caf\xe9.py")).write_text("y = 2\n")  # a Latin-1 name, not UTF-8
    problems = copy_submission(source, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["warmup.py"]
    text = "\n".join(problems)
    for expected in ("attention.py is a symbolic link", "big.py is 1.0 MB", "data/ is a folder",
                     "pipe.py is not a regular file", "not UTF-8"):
        assert expected in text, text
    assert oct((tmp_path / "copy" / "warmup.py").stat().st_mode & 0o777) == "0o644"


def test_points_follow_the_effort_of_each_exercise():
    """Worth 1: a formula (softmax, temperature); up to 4: a derivation (LayerNorm's backward); a challenge, a whole
    piece of the package's code, 3 to 5."""
    points = {ex.id: ex.points for ex in catalog.EXERCISES}
    assert {points[ex.id] for ex in catalog.EXERCISES if not ex.challenge} == {1, 2, 3, 4}
    assert {points[ex.id] for ex in catalog.EXERCISES if ex.challenge} <= {3, 4, 5}
    assert points["softmax"] < points["causal_attention"] < points["beam_step"] < points["layernorm_backward"]


def test_challenges_are_marked_and_counted_in_the_total():
    from llmcourse.course.grading.runner import ExerciseResult, GradeReport

    report = GradeReport("submission", [
        ExerciseResult("softmax", "Numerically stable softmax", 1.0, 1.0, "passed"),
        ExerciseResult("bpe_train", "BPE training", 2.0, 4.0, "failed", "a message", challenge=True),
        ExerciseResult("quantize_state_dict", "Quantize", 0.0, 3.0, "not implemented", challenge=True)], 1.0)
    assert (report.total, report.max_total, report.challenge_total, report.challenge_max_total) == (3, 8, 2, 7)
    table = format_table(report)
    assert "BPE training [challenge]" in table and "Numerically stable softmax [challenge]" not in table
    assert "2 / 7 of it from challenges" in table.splitlines()[-1] and "3 / 8" in table.splitlines()[-1]
    assert report.to_json()["challenge_total"] == 2 and report.to_json()["challenge_max_total"] == 7
    assert [e["challenge"] for e in report.to_json()["exercises"]] == [False, True, True]
    results = gradescope_results(report)
    assert results["score"] == 3 and "2 / 7 of them from challenge exercises" in results["output"]
    assert results["tests"][1]["name"] == "bpe_train: BPE training [challenge]" and results["tests"][1]["max_score"] == 4
    assert all(ex.challenge == (ex.id in ("bpe_train", "gpt_forward_cached", "generate_batch", "quantize_state_dict"))
               for ex in catalog.EXERCISES)
