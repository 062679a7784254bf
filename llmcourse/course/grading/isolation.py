"""Grade each exercise on its own code: inside its graded tests, the learner's earlier exercises are the reference's.

A learner's functions call their other exercises: causal_attention calls softmax, the GPT block calls attention,
cached attention calls softmax. Left alone, a softmax that is wrong, raises or hangs would cost every exercise built
on it. So during a graded test of exercise X, the learner's code's calls to the functions of the exercises that come
*before* X in the course are answered by the reference, in the trusted process (the sandbox sends the arguments and
gets back data: llmcourse.course.grading.sandbox), and X is graded on X's code alone.

Only earlier exercises: the reference of a later one (causal attention, say) could compute an earlier one (softmax)
for a learner who calls it, so calls to later exercises run the learner's own code.

The exercise loader asks a different question, "can the notebook use this function, with everything it calls?",
so it grades with the learner's own functions throughout (`own_dependencies`).
"""

from __future__ import annotations

from typing import Callable

from llmcourse.course import catalog
from llmcourse.course.impl import SOLUTIONS


def answered_by_reference(exercise_id: str) -> list[tuple[str, str]]:
    """(module, function) of every exercise before `exercise_id` in the course: the calls the reference answers."""
    position = catalog.EXERCISES.index(catalog.get(exercise_id))
    return [(ex.module, function) for ex in catalog.EXERCISES[:position] for function in ex.functions]


def course_function(qualified: str) -> Callable:
    """What answers a call to `module.function` in the grader: the reference from solutions/, or in a student
    release (no solutions/) the package's own version, tested equal to it (llmcourse.course.fallbacks)."""
    from llmcourse.course import fallbacks
    from llmcourse.course.loader import reference

    module, _, function = qualified.rpartition(".")
    return reference(qualified) if SOLUTIONS.is_dir() else fallbacks.fallback(module, function)
