"""The exercise loader: notebooks run on the learner's own code once it works, and on the package's before that.

    from llmcourse.course.loader import load
    softmax = load("attention.softmax")
    # softmax: using the course's implementation (yours is not implemented yet: exercise `softmax` in
    # exercises/attention.py)

`load` returns the learner's function from exercises/ when its body is written (no `raise NotImplementedError`
left) and its exercise's graded tests pass with the learner's own code throughout (the other exercises it calls
included), and otherwise the package's own version (llmcourse.course.fallbacks), saying in one line which it used and
why, naming the exercise it calls when that is the cause ("yours passes its own tests, but it calls your `softmax`,
which is not implemented yet"). A function the course provides (not an exercise) is the learner's copy in exercises/,
given without a word. The loader never reads solutions/: `reference(...)` is the grader's.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path
from typing import Callable

from llmcourse.course import catalog, fallbacks
from llmcourse.course.impl import Implementation, ImplementationImportError, solutions_folder
from llmcourse.files import COURSE_ROOT

EXERCISES_ENV = "LLMCOURSE_EXERCISES"
_verdicts: dict[tuple[str, str], tuple[bool, str]] = {}  # (exercise id, file hash) -> (passes, why not)


def _split(qualified: str) -> tuple[str, str]:
    module, _, name = qualified.rpartition(".")
    if not module:
        raise ValueError(f"name the function with its module, like 'attention.softmax', not {qualified!r}")
    return module, name


def reference(qualified: str) -> Callable:
    """The reference implementation of `module.function` from solutions/ (for the grader and the tests)."""
    module, name = _split(qualified)
    return Implementation(solutions_folder()).function(module, name)


def exercises_folder() -> Path:
    return Path(os.environ.get(EXERCISES_ENV, COURSE_ROOT / "exercises"))


def is_stub(path: Path, function: str) -> bool:
    """True when `function` in the file still raises NotImplementedError (the learner has not written it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Raise) and inner.exc is not None:
                    target = inner.exc.func if isinstance(inner.exc, ast.Call) else inner.exc
                    if isinstance(target, ast.Name) and target.id == "NotImplementedError":
                        return True
            return False
    return True  # deleted or renamed: nothing of the learner's to use


def _verdict(exercise: catalog.Exercise, folder: Path, *, own_dependencies: bool) -> tuple[bool, str]:
    """(passes, status line) of the exercise's graded tests on the folder, cached by the folder's content."""
    from llmcourse.course.grading.runner import grade

    digest = hashlib.sha1(b"".join(path.read_bytes() for path in sorted(folder.glob("*.py")))).hexdigest()
    key = (exercise.id, digest, own_dependencies)  # every file: the function may call code in other modules
    if key not in _verdicts:
        report = grade(submission=folder, only=[exercise.id], own_dependencies=own_dependencies)
        if report.error is not None:
            _verdicts[key] = (False, f"the grader could not run: {report.error.splitlines()[0]}")
        else:
            result = report.exercises[0]
            _verdicts[key] = (result.status == "passed", result.status_line)
    return _verdicts[key]


def _called_exercises(exercise: catalog.Exercise, folder: Path) -> list[tuple[catalog.Exercise, str]]:
    """(earlier exercise, function) for each function of an earlier exercise that the learner's functions of
    `exercise` call by name."""
    tree = ast.parse((folder / f"{exercise.module}.py").read_text(encoding="utf-8"))
    names = {inner.id for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in
             exercise.functions for inner in ast.walk(node) if isinstance(inner, ast.Name)}
    earlier = catalog.EXERCISES[:catalog.EXERCISES.index(exercise)]
    return [(ex, function) for ex in earlier for function in ex.functions if function in names]


def _problem(exercise: catalog.Exercise, folder: Path) -> str | None:
    """None when the learner's exercise works with their own code throughout; else what is wrong, naming the
    exercise it calls when the exercise itself passes its tests on its own."""
    passes, verdict = _verdict(exercise, folder, own_dependencies=True)
    if passes:
        return None
    if _verdict(exercise, folder, own_dependencies=False)[0]:  # fine on its own: the cause is something it calls
        for dependency, function in _called_exercises(exercise, folder):
            path = folder / f"{dependency.module}.py"
            cause = "is not implemented yet" if not path.is_file() or is_stub(path, function) else \
                _problem(dependency, folder)
            if cause is not None:
                return f"passes its own tests, but it calls your `{function}`, which {cause}"
    return f"does not pass its graded tests yet: {verdict}; see `llmcourse grade --only {exercise.id}`"


def load(qualified: str, *, verbose: bool = True) -> Callable:
    """The learner's `module.function` when it is written and passes its graded tests, else the package's version;
    code the course provides comes from the learner's copy in exercises/."""
    module, name = _split(qualified)
    exercise = catalog.exercise_of(module, name)
    folder = exercises_folder()
    if exercise is None:
        return Implementation(folder).function(module, name)
    path = folder / f"{module}.py"
    if not path.is_file() or is_stub(path, name):
        use_own, why = False, f"yours is not implemented yet: exercise `{exercise.id}` in {_shown(path)}"
    else:
        problem = _problem(exercise, folder)
        use_own, why = problem is None, f"yours {problem}"
    if use_own:
        try:
            function = Implementation(folder).function(module, name)
        except ImplementationImportError as err:
            use_own, why = False, str(err)
    if verbose:
        print(f"{name}: using your implementation from {_shown(path)}" if use_own else
              f"{name}: using the course's implementation ({why})")
    return function if use_own else fallbacks.fallback(module, name)


def _shown(path: Path) -> str:
    """`path` relative to the course when it lies inside it (exercises/attention.py), else as it is."""
    try:
        return str(path.relative_to(COURSE_ROOT))
    except ValueError:
        return str(path)
