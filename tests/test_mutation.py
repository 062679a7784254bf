"""The mutation runner (tests/mutation/run.py, `make mutants`) itself: which mutants it makes, and that it tells
a killed mutant from a surviving one."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmcourse.course import catalog
from llmcourse.course.impl import SOLUTIONS

pytestmark = pytest.mark.skipif(not SOLUTIONS.is_dir(), reason="mutation testing mutates solutions/, which this "
                                                                 "student release does not have")
RUNNER = Path(__file__).with_name("mutation") / "run.py"


def _runner():
    spec = importlib.util.spec_from_file_location("mutation_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mutants_change_only_the_learners_code():
    run = _runner()
    mutants = run.mutants_of(catalog.get("softmax"))
    labels = {m.label for m in mutants}
    assert {"drop keepdims=", "drop axis=", ".max -> .min", "drop the statement"} <= labels
    # the mutant that drops the shift by the maximum (an unstable softmax) is among them
    assert any(m.label == "keep only the left operand" and ".max(" in m.diff for m in mutants)
    assert len({m.key for m in mutants}) == len(mutants)  # one key per mutant
    # apply_temperature's check of temperature > 0 is provided (outside the solution markers): mutated on request
    learner = run.mutants_of(catalog.get("temperature"))
    provided = run.mutants_of(catalog.get("temperature"), provided=True)
    assert learner and all("temperature <= 0" not in m.diff for m in learner)
    assert any("temperature <= 0" in m.diff for m in provided)
    for m in learner:
        compile(m.source, "decoding.py", "exec")


WEAK_TESTS = '''
import torch
from llmcourse.course.grading import exercise

@exercise("temperature")
def test_temperature_changes_something(impl):
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    got = impl.decoding.apply_temperature(logits, 2.0)
    assert not torch.equal(got, logits), "apply_temperature(logits, 2.0) returned the logits unchanged"
'''


@pytest.mark.slow
def test_a_weak_test_lets_a_mutant_survive_and_the_report_shows_it(tmp_path):
    tests = tmp_path / "graded"
    tests.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), tests / "conftest.py")
    (tests / "test_decoding.py").write_text(textwrap.dedent(WEAK_TESTS), encoding="utf-8")
    report = tmp_path / "mutants.txt"
    done = subprocess.run([sys.executable, str(RUNNER), "--exercise", "temperature", "--tests", str(tests),
                           "--report", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = report.read_text(encoding="utf-8")
    # two mutants: `logits * temperature` passes the weak test, `return logits` does not
    assert text.splitlines()[1].split() == ["temperature", "2", "1", "0", "0", "1", "0"], text
    assert "SURVIVED (Div -> Mult)" in text and "+    return logits * temperature" in text, text
    assert "surviving mutants not known to be equivalent: 1" in text, text


@pytest.mark.slow
def test_the_graded_tests_kill_every_temperature_mutant(tmp_path):
    report = tmp_path / "mutants.txt"
    done = subprocess.run([sys.executable, str(RUNNER), "--exercise", "temperature", "--report", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = report.read_text(encoding="utf-8")
    assert text.splitlines()[1].split() == ["temperature", "2", "2", "0", "0", "0", "0"], text
