"""The exercise loader gives the learner's function once it works, else the package's (never solutions/), and says
which."""

import shutil
from pathlib import Path

import pytest

from llmcourse.course import fallbacks
from llmcourse.course.impl import Implementation, solutions_folder
from llmcourse.course.loader import is_stub, load, reference
from llmcourse.files import COURSE_ROOT

STUB = 'raise NotImplementedError("warmup_mean_squared_error: mean_squared_error is not implemented yet; ' \
       'write your code here")'


@pytest.fixture
def learner_folder(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "exercises"
    shutil.copytree(COURSE_ROOT / "exercises", folder)
    monkeypatch.setenv("LLMCOURSE_EXERCISES", str(folder))
    return folder


def _write_answer(folder: Path, body: str) -> None:
    path = folder / "warmup.py"
    path.write_text(path.read_text().replace(STUB, body))


def test_stub_gives_the_package_version(learner_folder, capsys):
    fn = load("warmup.mean_squared_error")
    assert ("mean_squared_error: using the course's implementation (yours is not implemented yet: exercise "
            f"`warmup_mean_squared_error` in {learner_folder / 'warmup.py'})") in capsys.readouterr().out
    assert fn is fallbacks.mean_squared_error


@pytest.mark.slow
def test_working_answer_is_used(learner_folder, capsys):
    _write_answer(learner_folder, "d = np.asarray(predictions, float) - np.asarray(targets, float)\n"
                                  "    if d.ndim and np.shape(predictions) != np.shape(targets):\n"
                                  "        raise ValueError('shapes differ')\n"
                                  "    return float(np.mean(d ** 2))")
    fn = load("warmup.mean_squared_error")
    assert "using your implementation" in capsys.readouterr().out
    assert fn([1.0, 2.0], [1.0, 4.0]) == 2.0
    assert fn is not reference("warmup.mean_squared_error")


@pytest.mark.slow
def test_wrong_answer_falls_back_with_the_reason(learner_folder, capsys):
    _write_answer(learner_folder, "return 42.0")
    fn = load("warmup.mean_squared_error")
    out = capsys.readouterr().out
    assert "using the course's implementation (yours does not pass its graded tests yet: failed:" in out
    assert "llmcourse grade --only warmup_mean_squared_error" in out
    assert fn is fallbacks.mean_squared_error


def test_provided_code_is_the_learners_copy_given_silently(learner_folder, capsys):
    assert load("backprop.linear_forward") is Implementation(learner_folder).backprop.linear_forward
    assert capsys.readouterr().out == ""


def test_the_loader_never_reads_solutions(learner_folder, monkeypatch, capsys):
    def refuse(self, name):
        raise AssertionError(f"the loader imported {name} from solutions/")

    real = Implementation.module
    monkeypatch.setattr(Implementation, "module", lambda self, name: refuse(self, name)
                        if self.folder.name == "solutions" else real(self, name))
    assert load("attention.softmax") is fallbacks.softmax
    assert load("gpt_numpy.gpt_forward") is Implementation(learner_folder).gpt_numpy.gpt_forward
    assert "in " + str(learner_folder / "attention.py") in capsys.readouterr().out


def test_is_stub_reads_the_function_body():
    assert is_stub(COURSE_ROOT / "exercises" / "warmup.py", "mean_squared_error")
    assert not is_stub(solutions_folder() / "warmup.py", "mean_squared_error")


def test_unqualified_name_is_explained():
    with pytest.raises(ValueError, match="like 'attention.softmax'"):
        load("softmax")
