"""Where a notebook says "your `name`", the learner's function is at work: the notebook loads `name` through the
exercise loader (which hands out the learner's function once it passes, and says so) in that cell or the next."""

import json
import re
from pathlib import Path

import pytest

from llmcourse import catalog

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
EXERCISE_FUNCTIONS = {function for ex in catalog.EXERCISES for function in ex.functions}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_your_function_is_loaded_through_the_loader(notebook):
    cells = ["".join(cell["source"]) for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]]
    first_load: dict[str, int] = {}
    for index, source in enumerate(cells):
        for match in re.finditer(r'load\(\s*"\w+\.(\w+)"', source):
            first_load.setdefault(match.group(1), index)
    unbacked = [(index, name) for index, source in enumerate(cells)
                for name in re.findall(r"your `(\w+)`", source)
                if name in EXERCISE_FUNCTIONS and first_load.get(name, len(cells)) > index + 1]
    assert not unbacked, f"{notebook.name}: cells claim the learner's function without loading it through " \
                         f"llmcourse.loader.load in that cell or the next: {unbacked}"
