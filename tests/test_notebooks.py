"""Every notebook runs top to bottom headless without an error output, and is stored without outputs.

Each notebook is executed once per test run, in a fresh kernel with LLMCOURSE_FAST=1, by the `notebook_runs` fixture
(tests/conftest.py), which keeps the executed copy for the book's tests (tests/test_course_build.py)."""

import pytest

from llmcourse.course.notebooks import notebook_paths, stored_outputs

NOTEBOOKS = notebook_paths()
IDS = [path.stem for path in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no numbered notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_without_outputs(path):
    dirty = stored_outputs(path)
    assert not dirty, f"{path.name}: code cells {dirty} were committed with outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_without_errors(path, notebook_runs):
    result = notebook_runs.get(path)
    assert not result.errors, f"{path.name} shows errors:\n" + "\n".join(result.errors)
