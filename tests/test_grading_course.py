"""The course's own graded tests: full marks for solutions/, zero and "not implemented" for exercises/."""

import hashlib
import json
import shutil

import pytest

from llmcourse.course import catalog
from llmcourse.course.grading.runner import format_table, grade, gradescope_results
from llmcourse.course.impl import solutions_folder
from llmcourse.files import COURSE_ROOT

pytestmark = pytest.mark.slow
solutions_folder()  # grading the course's own folders needs the reference answers: a student release skips this module


def test_solutions_get_full_marks():
    report = grade("solutions")
    assert report.error is None, report.error
    assert report.total == report.max_total and report.exit_code == 0, format_table(report)
    assert {ex.id for ex in report.exercises} == set(catalog.BY_ID), "some exercise has no graded test"


def test_exercises_get_zero_and_not_implemented():
    report = grade("exercises")
    assert report.error is None, report.error
    assert report.exit_code == 1
    assert report.total == 0, format_table(report)
    assert all(ex.status == "not implemented" for ex in report.exercises), format_table(report)


def test_broken_submission_costs_only_its_own_exercises(tmp_path):
    """The issue's acceptance case, on the course's real graded tests: attention.py loops forever at import,
    quantization.py has a syntax error, top_k calls os._exit(1); everything else is the reference and keeps full
    marks, the modules that import from attention.py (backprop, kv_cache, gpt_numpy) included."""
    submission = tmp_path / "submission"
    shutil.copytree(COURSE_ROOT / "solutions", submission, ignore=shutil.ignore_patterns("__pycache__"))
    (submission / "attention.py").write_text((submission / "attention.py").read_text() + "\nwhile True:\n    pass\n")
    (submission / "quantization.py").write_text((submission / "quantization.py").read_text() + "\ndef oops(:\n")
    decoding = submission / "decoding.py"
    source = decoding.read_text()
    start = source.index("def top_k_filter")
    region = source.index("# BEGIN SOLUTION", start)
    decoding.write_text(source[:region] + "import os\n    os._exit(1)\n    " + source[region:])
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in submission.iterdir()}

    report = grade(submission=submission, timeout=30)

    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in submission.iterdir()} == before
    broken = {ex.id: ex.status for ex in report.exercises if ex.points < ex.max_points}
    expected = {"top_k": "crashed"}
    expected.update({ex.id: "does not import" for ex in catalog.EXERCISES
                     if ex.module in ("attention", "quantization")})
    assert broken == expected, format_table(report)
    assert "did not finish importing within 10 s" in report.exercises[
        [ex.id for ex in report.exercises].index("softmax")].message
    assert report.exit_code == 1 and report.total == report.max_total - sum(
        catalog.get(key).points for key in expected)
    # The hang is waited for once per test process, not once per test of the 12 that import attention.py (which
    # took 400 s before); 150 s leaves room for a slow machine and is far below that.
    assert report.execution_time < 150, report.execution_time
    results = tmp_path / "results.json"
    results.write_text(json.dumps(gradescope_results(report)))
    assert json.loads(results.read_text())["score"] == report.total


def test_a_broken_building_block_costs_only_its_own_exercise(tmp_path, monkeypatch, capsys):
    """softmax raises: only softmax loses points, because causal attention, multi-head attention and cached
    attention, which call it, are graded with the reference softmax. With the learner's own code throughout
    (what the exercise loader asks before a notebook uses a function) they fail, and the notebook gets the
    package's causal attention."""
    from llmcourse.course import fallbacks
    from llmcourse.course.loader import load

    submission = tmp_path / "submission"
    shutil.copytree(COURSE_ROOT / "solutions", submission, ignore=shutil.ignore_patterns("__pycache__"))
    attention = submission / "attention.py"
    source = attention.read_text()
    start = source.index("# BEGIN SOLUTION", source.index("def softmax"))
    end = source.index("# END SOLUTION", start)
    attention.write_text(source[:start] + 'raise RuntimeError("my softmax is broken")\n    ' + source[end:])
    only = [ex.id for ex in catalog.EXERCISES if ex.module in ("attention", "kv_cache", "gpt_numpy")]

    report = grade(submission=submission, only=only)
    assert {ex.id: ex.status for ex in report.exercises if ex.points < ex.max_points} == {"softmax": "failed"}, \
        format_table(report)
    assert "my softmax is broken" in report.exercises[0].message

    together = grade(submission=submission, only=only, own_dependencies=True)
    lost = {ex.id for ex in together.exercises if ex.points < ex.max_points}
    assert lost == {"softmax", "causal_attention", "multihead_attention", "cached_attention"}, format_table(together)

    monkeypatch.setenv("LLMCOURSE_EXERCISES", str(submission))
    assert load("attention.causal_attention") is fallbacks.causal_attention
    assert "yours passes its own tests, but it calls your `softmax`, which does not pass its graded tests yet: " \
           "failed: raised RuntimeError: my softmax is broken" in capsys.readouterr().out
