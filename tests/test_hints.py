"""Every exercise function has two hints: the idea, in its docstring, and the detail, from `llmcourse hint ID`."""

import ast

import pytest

from llmcourse.cli import main
from llmcourse.course import catalog
from llmcourse.course.hints import HINTS, hints
from llmcourse.files import COURSE_ROOT


@pytest.mark.parametrize("exercise", catalog.EXERCISES, ids=lambda ex: ex.id)
def test_each_function_has_an_idea_in_its_docstring_and_a_detail_on_demand(exercise):
    tree = ast.parse((COURSE_ROOT / "exercises" / f"{exercise.module}.py").read_text(encoding="utf-8"))
    docstrings = {node.name: " ".join((ast.get_docstring(node) or "").split()) for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef)}
    for function, idea, detail in hints(exercise.id):
        assert idea and detail and idea != detail
        assert f"Hint: {idea} More: `llmcourse hint {exercise.id}`." in docstrings[function], function


def test_the_detail_is_not_in_the_docstring():
    """The docstring keeps the first level only: the formula waits for `--more`."""
    text = " ".join((COURSE_ROOT / "exercises" / "backprop.py").read_text(encoding="utf-8").split())
    assert HINTS["backprop.layernorm_backward"][1][:60] not in text


def test_llmcourse_hint_prints_one_level_then_both(capsys):
    assert main(["hint", "layernorm_backward"]) == 0
    first = capsys.readouterr().out
    assert HINTS["backprop.layernorm_backward"][0] in first and HINTS["backprop.layernorm_backward"][1] not in first
    assert main(["hint", "layernorm_backward", "--more"]) == 0
    assert HINTS["backprop.layernorm_backward"][1] in capsys.readouterr().out
    assert main(["hint", "no_such_exercise"]) == 2
