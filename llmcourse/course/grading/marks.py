"""The `@exercise("<id>")` marker that ties a graded test to one exercise of the catalog."""

from __future__ import annotations

import pytest

from llmcourse.course import catalog


def exercise(exercise_id: str) -> pytest.MarkDecorator:
    """Mark a graded test as belonging to `exercise_id`; `pytest -m <exercise_id>` then runs it."""
    catalog.get(exercise_id)  # a typo fails at collection, naming the valid ids
    return getattr(pytest.mark, exercise_id)


def exercise_id_of(item: pytest.Item) -> str | None:
    """The exercise a collected test belongs to (None for the project's own tests)."""
    ids = [mark.name for mark in item.iter_markers() if mark.name in catalog.BY_ID]
    if len(ids) > 1:
        raise ValueError(f"{item.nodeid} is marked with several exercises: {ids}")
    return ids[0] if ids else None


def register_markers(config: pytest.Config) -> None:
    for ex in catalog.EXERCISES:
        config.addinivalue_line("markers", f"{ex.id}: graded exercise '{ex.title}' ({ex.points:g} points)")
