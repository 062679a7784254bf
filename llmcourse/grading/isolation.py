"""Grade each exercise on its own code: inside its graded tests, the learner's other exercises are the reference's.

A learner's functions call their other exercises: causal_attention calls softmax, the GPT block calls attention,
GELU and LayerNorm, cached attention calls softmax. Left alone, a softmax that is wrong, raises or hangs would cost
every exercise built on it. So during a graded test of exercise X, every name in the learner's loaded modules that
refers to a function of another exercise is set to the reference function (with pytest's monkeypatch, undone after
the test), and X is graded on X's code alone.

The exercise loader asks a different question, "can the notebook use this function, with everything it calls?",
so it grades with the learner's own functions throughout (`own_dependencies`).
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Callable

from llmcourse import catalog
from llmcourse.impl import Implementation, ImplementationImportError


def _exercise_of(function: object, package: str) -> catalog.Exercise | None:
    """The exercise in which the learner wrote `function`, when it is a function of the implementation's package."""
    if not inspect.isfunction(function) or not function.__module__.startswith(package + "."):
        return None
    return catalog.exercise_of(function.__module__[len(package) + 1:], function.__name__)


def other_exercises_in_reach(impl: Implementation, exercise_id: str) -> list[tuple[types.ModuleType, str, Callable]]:
    """(module, name, reference function) for each name in the implementation's modules that refers to a function of
    another exercise than `exercise_id`. Imports the exercise's own module first (and so the modules it imports);
    when that fails there is nothing to replace: the test itself reports the import error."""
    try:
        impl.module(catalog.get(exercise_id).module)
    except ImplementationImportError:
        return []
    from llmcourse.loader import reference

    found = []
    prefix = impl.package + "."
    for qualified, module in list(sys.modules.items()):
        if not qualified.startswith(prefix):
            continue
        for name, value in list(vars(module).items()):
            owner = _exercise_of(value, impl.package)
            if owner is not None and owner.id != exercise_id:
                found.append((module, name, reference(f"{owner.module}.{value.__name__}")))
    return found
