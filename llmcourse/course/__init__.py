"""The course machinery, which learners never import: the catalog of exercises (catalog), loading an implementation
folder (impl), the exercise loader and the package's own versions it hands out (loader, fallbacks), the hints (hints),
the learner's stubs and the student release (release), grading and its sandbox (grading), the headless notebook runner
(notebooks) and the book made with it (book), and the set-up check (check).

It is the package's top layer below the `llmcourse` command: it imports the rest of llmcourse, and no module of
llmcourse but cli.py and __main__.py imports it (tests/test_import_layers.py). Importing it loads nothing: `execute`,
the notebook runner, is imported with nbclient on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`from llmcourse.course import execute`: llmcourse.course.notebooks.execute, imported when first asked for."""
    if name == "execute":
        from llmcourse.course.notebooks import execute
        return execute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
