"""`llmcourse release`: exercises/ is exactly what solutions/ generates, and no solution leaks into it."""

import ast
import textwrap
from pathlib import Path

import pytest

from llmcourse import catalog
from llmcourse.impl import COURSE_ROOT
from llmcourse.loader import is_stub
from llmcourse.release import ReleaseError, differences, generate, learner_work, stub_source


def test_exercises_are_up_to_date_with_solutions():
    problems = differences(generate(), COURSE_ROOT / "exercises")
    assert not problems, "run `llmcourse release`:\n" + "\n".join(problems)


@pytest.mark.parametrize("exercise", catalog.EXERCISES, ids=lambda ex: ex.id)
def test_no_solution_leaks_into_exercises(exercise):
    path = COURSE_ROOT / "exercises" / f"{exercise.module}.py"
    assert path.exists(), f"exercises/{exercise.module}.py is missing"
    leaked = [f for f in exercise.functions if not is_stub(path, f)]
    assert not leaked, f"exercises/{path.name}: {leaked} contain code instead of a NotImplementedError stub"


@pytest.mark.parametrize("exercise", catalog.EXERCISES, ids=lambda ex: ex.id)
def test_every_exercise_has_a_solution_region(exercise):
    path = COURSE_ROOT / "solutions" / f"{exercise.module}.py"
    assert path.exists(), f"solutions/{exercise.module}.py is missing"
    tree = ast.parse(path.read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    missing = [f for f in exercise.functions if f not in defined]
    assert not missing, f"solutions/{path.name} does not define {missing}"
    assert "# BEGIN SOLUTION" in path.read_text()


SOLUTION = '''
def mean_squared_error(predictions, targets):
    """Docstring stays."""
    x = 1  # provided code stays
    # BEGIN SOLUTION
    return x
    # END SOLUTION
'''


def test_stub_replaces_the_region_at_its_indentation():
    out = stub_source(textwrap.dedent(SOLUTION), "warmup", "warmup.py")
    assert '"""Docstring stays."""' in out and "x = 1  # provided code stays" in out
    assert "return x" not in out and "BEGIN SOLUTION" not in out
    assert ('    raise NotImplementedError("warmup_mean_squared_error: mean_squared_error is not implemented yet; '
            'write your code here")') in out
    ast.parse(out)


@pytest.mark.parametrize("source, message", [
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    # END SOLUTION\n", "x.py:3: nested"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "x.py:2: '# BEGIN SOLUTION' is never closed"),
    ("def f():\n    # END SOLUTION\n", "x.py:2: '# END SOLUTION' without"),
    ("def not_an_exercise():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n", "x.py:2: a solution region"),
])
def test_marker_mistakes_name_file_and_line(source, message):
    with pytest.raises(ReleaseError, match=message):
        stub_source(source, "warmup", "x.py")


def test_release_refuses_to_overwrite_a_learners_work(tmp_path: Path):
    generated = {"warmup.py": stub_source(textwrap.dedent(SOLUTION), "warmup", "warmup.py")}
    (tmp_path / "warmup.py").write_text(textwrap.dedent(SOLUTION))  # the learner filled the stub in
    assert learner_work(generated, tmp_path) == ["exercises/warmup.py"]
    (tmp_path / "warmup.py").write_text(generated["warmup.py"])
    assert learner_work(generated, tmp_path) == []
