"""Where a notebook says "your `name`", the learner's function is at work: the notebook loads `name` through the
exercise loader (which hands out the learner's function once it passes, and says so) in that cell or the next."""

import json
import re
from pathlib import Path

import pytest

from llmcourse.course import catalog

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
                         f"llmcourse.course.loader.load in that cell or the next: {unbacked}"


def _text(stem: str) -> str:
    """A notebook's cells as one text, with line breaks as spaces (prose is wrapped anywhere)."""
    path = next(p for p in NOTEBOOKS if p.stem.startswith(stem))
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return " ".join(" ".join("".join(cell["source"]).split()) for cell in cells)


# (notebook, a wrong claim that must stay gone, the corrected sentence): each was found wrong in a review.
CORRECTIONS = [
    ("01", "treats its input as a *set*: shuffle the tokens and each output is shuffled the same way. Word order",
     "A GPT's causal mask lets each token see only the ones before it, which breaks that symmetry"),
    ("02", "into structure (chapter 05)", "Training is what turns such noise into structure: chapter 05 plots the "
     "heads of a trained model."),
    ("05", "no plot of the trained heads", "### What did the heads learn?"),
    ("07", "such as RoPE, can drop the oldest entries instead",
     "that only approximates recomputing the window: the cached keys of deeper layers were computed while attending "
     "to the dropped tokens"),
    ("07", "fewer positions with a cache", "Why is the speedup so much smaller than the count of positions"),
    ("07", "The speedup therefore grows roughly linearly with the number of new tokens",
     "Weights are read once per step, either way."),
    ("08", "throughput grows almost linearly", "measured, it climbs more slowly"),
    ("09", "for 2/32 of a byte more per weight", "for 1/32 of a byte more per weight"),
    ("09", "int4 costs several percent", "int4 costs far more than int8"),
    ("09", "and the fused op runs a scalar loop here", "9 bytes per weight against 4, so slower than float32 when both "
     "stream from memory"),
    ("09", "more than the CPU's caches hold, as in a real decoding step", "more than most CPUs' caches hold"),
    ("10", "Generation speed is bounded by bytes per step / bandwidth",
     "a step takes at least bytes per step / bandwidth, so tokens/s is at most bandwidth / bytes per step"),
]


@pytest.mark.parametrize("stem, wrong, corrected", CORRECTIONS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CORRECTIONS)])
def test_corrected_claims_stay_corrected(stem, wrong, corrected):
    text = _text(stem)
    assert wrong not in text, f"notebook {stem} says again: {wrong!r}"
    assert corrected in text, f"notebook {stem} lost the corrected sentence: {corrected!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_points_named_in_a_notebook_are_the_catalogs(notebook):
    text = " ".join("".join(cell["source"]) for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"])
    for kind, exercise_id, points in re.findall(r"(Exercise|Challenge) `(\w+)`\*\* \(([0-9.]+) points?", text):
        assert float(points) == catalog.get(exercise_id).points, f"{notebook.name}: {exercise_id} is worth " \
                                                                 f"{catalog.get(exercise_id).points:g}, not {points}"
        assert (kind == "Challenge") == catalog.get(exercise_id).challenge, \
            f"{notebook.name} calls {exercise_id} a{'' if kind == 'Challenge' else 'n'} {kind.lower()}; the catalog " \
            "does not"


def test_every_challenge_is_introduced_in_its_notebook():
    for ex in catalog.EXERCISES:
        if ex.challenge:
            claim = f"**Challenge `{ex.id}`** ({ex.points:g} points"
            assert claim in _text(ex.notebook[:2]), f"notebook {ex.notebook} should introduce the challenge: {claim}"
