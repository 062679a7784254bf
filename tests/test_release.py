"""`llmcourse release`: exercises/ is exactly what solutions/ generates, and no solution leaks into it."""

import ast
import shutil
import textwrap
from pathlib import Path

import pytest

from llmcourse.course import catalog
from llmcourse.course.impl import solutions_folder
from llmcourse.course.loader import is_stub
from llmcourse.course.release import ReleaseError, differences, generate, stub_source, write
from llmcourse.files import COURSE_ROOT


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
    path = solutions_folder() / f"{exercise.module}.py"
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


def _learner_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "exercises"
    shutil.copytree(COURSE_ROOT / "exercises", folder)
    return folder


STUB = ('    raise NotImplementedError("warmup_mean_squared_error: mean_squared_error is not implemented yet; write your '
        'code here")\n')


@pytest.mark.parametrize("answer", [
    "    d = np.asarray(predictions) - np.asarray(targets)  # started, not finished\n" + STUB,
    "    return float(np.mean((np.asarray(predictions) - np.asarray(targets)) ** 2))\n" + STUB.replace("raise", "# raise"),
], ids=["code above the kept raise", "finished, the raise commented out"])
def test_release_keeps_a_learners_function_and_says_so(tmp_path: Path, answer: str):
    folder = _learner_copy(tmp_path)
    path = folder / "warmup.py"
    mine = path.read_text().replace(STUB, answer)
    path.write_text(mine + "\n\ndef my_helper():\n    return 1\n")
    generated = generate()  # a course update: the module's and the function's docstrings change
    generated["warmup.py"] = generated["warmup.py"].replace('"""Mean of the squared', '"""The mean of the squared')
    generated["warmup.py"] = generated["warmup.py"].replace('"""Warm-up exercise', '"""The warm-up exercise')
    changed, kept = write(generated, folder)
    text = path.read_text()
    assert kept == ["exercises/warmup.py: mean_squared_error", "exercises/warmup.py: my_helper"]
    assert answer in text and "def my_helper():\n    return 1\n" in text  # all of the learner's work, as it was
    assert '"""Mean of the squared' in text  # the learner's function is kept whole, its docstring too
    assert changed == ["warmup.py"] and text.startswith('"""The warm-up exercise')  # the rest is updated
    ast.parse(text)


def test_release_replaces_functions_that_are_still_the_stub(tmp_path: Path):
    folder = _learner_copy(tmp_path)
    generated = generate()
    generated["warmup.py"] = generated["warmup.py"].replace('"""Mean of the squared', '"""The mean of the squared')
    assert write(generated, folder) == (["warmup.py"], [])
    assert (folder / "warmup.py").read_text() == generated["warmup.py"]
    assert write(generated, folder) == ([], [])


def test_release_leaves_a_file_that_does_not_parse_alone(tmp_path: Path):
    folder = _learner_copy(tmp_path)
    (folder / "warmup.py").write_text("def mean_squared_error(:\n")
    assert write(generate(), folder)[1] == ["exercises/warmup.py: (the whole file: it does not parse)"]
    assert (folder / "warmup.py").read_text() == "def mean_squared_error(:\n"
