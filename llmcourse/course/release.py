"""Generate the learner's stubs in exercises/ from the reference answers in solutions/.

In solutions/, the code a learner writes stands between two marker lines, inside a function of the catalog:

    def softmax(x, axis=-1):
        \"\"\"...\"\"\"
        # BEGIN SOLUTION
        ...
        # END SOLUTION

`generate` replaces each such region, markers included, with one `raise NotImplementedError("<id>: ...")` at the
markers' indentation. Everything else (imports, docstrings, provided helpers) is copied as it is, so stubs keep
their signatures and always import.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmcourse.course import catalog
from llmcourse.course.impl import solutions_folder
from llmcourse.files import COURSE_ROOT

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB_CALL = "raise NotImplementedError("


class ReleaseError(ValueError):
    """The solutions cannot be turned into stubs (a marker problem), said with file and line."""


@dataclass
class Region:
    begin: int  # 0-based line index of the BEGIN marker
    end: int  # 0-based line index of the END marker
    indent: str


def find_regions(source: str, filename: str) -> list[Region]:
    """The solution regions of one file, checked: no nesting, no unterminated or stray markers."""
    regions, open_at = [], None
    lines = source.splitlines()
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(BEGIN):
            if open_at is not None:
                raise ReleaseError(f"{filename}:{i + 1}: nested '{BEGIN}' (the one at line {open_at + 1} is "
                                   f"not closed)")
            open_at = i
        elif text.startswith(END):
            if open_at is None:
                raise ReleaseError(f"{filename}:{i + 1}: '{END}' without a '{BEGIN}' before it")
            begin_line = lines[open_at]
            regions.append(Region(open_at, i, begin_line[: len(begin_line) - len(begin_line.lstrip())]))
            open_at = None
    if open_at is not None:
        raise ReleaseError(f"{filename}:{open_at + 1}: '{BEGIN}' is never closed by '{END}'")
    return regions


def _enclosing_function(tree: ast.Module, line: int) -> str | None:
    """Name of the innermost top-level or nested function containing 1-based `line`."""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= node.end_lineno:
            if best is None or node.lineno > best.lineno:
                best = node
    return best.name if best else None


def stub_source(source: str, module: str, filename: str) -> str:
    """The exercise version of one solution file."""
    regions = find_regions(source, filename)
    if not regions:
        return source
    tree = ast.parse(source, filename)
    lines = source.splitlines(keepends=True)
    out, last = [], 0
    for region in regions:
        function = _enclosing_function(tree, region.begin + 1)
        exercise = catalog.exercise_of(module, function) if function else None
        if exercise is None:
            raise ReleaseError(
                f"{filename}:{region.begin + 1}: a solution region must sit inside a function that the catalog "
                f"(llmcourse/course/catalog.py) lists as an exercise of module {module!r}; found it in "
                f"{function or 'module-level code'}"
            )
        message = f"{exercise.id}: {function} is not implemented yet; write your code here"
        out.extend(lines[last: region.begin])
        out.append(f'{region.indent}{STUB_CALL}"{message}")\n')
        last = region.end + 1
    out.extend(lines[last:])
    return "".join(out)


def generate(solutions: Path | None = None) -> dict[str, str]:
    """File name -> generated exercise source, for every .py file in solutions/ (SolutionsMissing without it)."""
    solutions = solutions_folder() if solutions is None else solutions
    return {
        path.name: stub_source(path.read_text(encoding="utf-8"), path.stem, str(path.relative_to(solutions.parent)))
        for path in sorted(solutions.glob("*.py"))
    }


def differences(generated: dict[str, str], exercises: Path) -> list[str]:
    """Human-readable differences between what `generate` gives and what exercises/ holds."""
    problems = []
    for name, text in generated.items():
        path = exercises / name
        if not path.exists():
            problems.append(f"exercises/{name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            diff = difflib.unified_diff(text.splitlines(), path.read_text(encoding="utf-8").splitlines(),
                                        f"generated/{name}", f"exercises/{name}", lineterm="", n=1)
            problems.append(f"exercises/{name} differs from what solutions/{name} generates:\n"
                            + "\n".join(list(diff)[:20]))
    for path in sorted(exercises.glob("*.py")):
        if path.name not in generated:
            problems.append(f"exercises/{path.name} has no counterpart in solutions/")
    return problems


def _spans(source: str) -> dict[str, tuple[int, int, int]]:
    """Top-level function name -> (first line, first line of its body after the docstring, end), 0-based, end
    exclusive; the end takes in the comments indented under the function that follow its last statement."""
    lines = source.splitlines()
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            end = node.end_lineno
            while end < len(lines) and (not lines[end].strip() or
                                        (lines[end].strip().startswith("#") and
                                         len(lines[end]) - len(lines[end].lstrip()) > node.col_offset)):
                end += 1
            while end > node.end_lineno and not lines[end - 1].strip():
                end -= 1
            spans[node.name] = (first, body[0].lineno - 1 if body else end, end)
    return spans


def merge(generated: str, current: str, module: str) -> tuple[str, list[str]]:
    """The generated exercise file with the learner's work in `current` kept, and the names kept.

    An exercise function is replaced only while its body (what follows the docstring) is still exactly the generated
    stub's; any other body (code above a kept `raise NotImplementedError`, a finished function, that line commented
    out) stays as the learner wrote it. Functions of the learner's own that the generated file does not define stay
    too, after the course's code. A file that does not parse is left whole (every name reported).
    """
    try:
        mine = _spans(current)
    except SyntaxError:
        return current, ["(the whole file: it does not parse)"]
    theirs = _spans(generated)
    new_lines, my_lines = generated.splitlines(keepends=True), current.splitlines(keepends=True)
    kept, out, last = [], [], 0
    for name, (first, body, end) in theirs.items():
        if catalog.exercise_of(module, name) is None or name not in mine:
            continue
        my_first, my_body, my_end = mine[name]
        if my_lines[my_body:my_end] != new_lines[body:end]:
            out += new_lines[last:first] + my_lines[my_first:my_end]
            last = end
            kept.append(name)
    out += new_lines[last:]
    own = [name for name in mine if name not in theirs]
    for name in own:
        first, _, end = mine[name]
        out += ["\n\n"] + my_lines[first:end]
    return "".join(out), kept + own


def write(generated: dict[str, str], exercises: Path, *, keep_work: bool = True) -> tuple[list[str], list[str]]:
    """Write the generated files, keeping the learner's work (`merge`) unless `keep_work` is False.
    Returns (names of the files that changed, "file: function" for each piece of learner work kept)."""
    exercises.mkdir(exist_ok=True)
    changed, kept = [], []
    for name, text in generated.items():
        path = exercises / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current is not None and keep_work:
            text, names = merge(text, current, path.stem)
            kept += [f"exercises/{name}: {function}" for function in names]
        if text != current:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed, kept


# -- the student release: the whole course for a class, with no answer in it -----------------------------------------

NOT_COURSE_FILES = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}

STUDENT_README = """\
# llmcourse

How large language models work, and how their inference is made fast: built by hand, from NumPy up to PyTorch, on
a laptop's CPU. The notebooks in `notebooks/` teach; you write the exercises in `exercises/`.

## Two commands

```bash
make lab    # first time: creates .venv and installs the course (about a minute); then opens JupyterLab
make test   # the course's own tests (your exercises are graded with `llmcourse grade`, below)
```

All you need is Python 3.10+ with pip, and `make`. No GPU and no internet at run time.

## Doing an exercise

1. A notebook introduces the exercise, e.g. *stable softmax* in `exercises/attention.py`. Each exercise is a plain
   function whose docstring gives the shapes, dtypes and what to return; its body raises `NotImplementedError`.
2. Write the body (replace the `raise NotImplementedError(...)` line) and save. Stuck? The docstring's hint gives
   the idea; `.venv/bin/llmcourse hint softmax --more` gives the formula or the call that does it.
3. Grade it: `.venv/bin/llmcourse grade --only softmax`, or `.venv/bin/llmcourse grade` (or `make grade`) for the
   whole table of points and, for each exercise, what is wrong.
4. Re-run the notebook: until your function passes its tests the notebook uses the course's own implementation,
   and from then on yours; it says which.

Each exercise is graded on its own code: while your causal attention is graded, its calls to softmax are answered
by the course's own softmax, so a mistake in softmax costs softmax's points only. The notebooks ask the other
question (does it work with your code throughout?) before they use your function.
"""


def course_files(root: Path = COURSE_ROOT) -> list[Path]:
    """The course's files, relative to `root`: what git tracks in a checkout, else every file but build outputs."""
    import subprocess
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        return sorted(Path(name) for name in listed.decode().split("\0") if name and (root / name).is_file())
    return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file() and not
                  NOT_COURSE_FILES.intersection(path.relative_to(root).parts) and
                  not any(part.endswith(".egg-info") for part in path.relative_to(root).parts))


def held_out(path: Path, patterns: tuple[str, ...]) -> bool:
    """True when a glob of `patterns` (relative to the course root) matches the file `path` or a folder it is in."""
    return any(fnmatch.fnmatch(part.as_posix(), pattern) for part in (path, *path.parents[:-1]) for pattern in patterns)


def student_release(out: Path, hold_out: tuple[str, ...] = ()) -> list[Path]:
    """Write the course for a class into `out` (absent or empty): every course file but solutions/ and those matching
    a `hold_out` glob (relative to the course root), exercises/ generated from solutions/, and the student README.
    Returns the files written, relative to `out`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"{out} exists and is not empty: give a new or empty folder")
    stubs = generate()
    files = [path for path in course_files() if path.parts[0] not in ("solutions", "exercises")
             and not held_out(path, hold_out)]
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(COURSE_ROOT / path, out / path)
    (out / "README.md").write_text(STUDENT_README, encoding="utf-8")
    written = files + [Path("exercises") / name for name in write(stubs, out / "exercises")[0]]
    (out / "exercises" / "__init__.py").touch()
    return sorted(set(written) | {Path("README.md"), Path("exercises/__init__.py")})


def solution_lines(solutions: Path = COURSE_ROOT / "solutions", min_length: int = 31) -> set[str]:
    """The lines a student release must not hold: each line (stripped, at least `min_length` characters) inside a
    solution region of solutions/*.py that does not also stand outside the regions (provided code)."""
    inside, outside = set(), set()
    for path in sorted(solutions.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        text = [line.strip() for line in source.splitlines()]
        last = 0
        for region in find_regions(source, path.name):
            outside.update(text[last: region.begin])
            inside.update(text[region.begin + 1: region.end])
            last = region.end + 1
        outside.update(text[last:])
    return {line for line in inside - outside if len(line) >= min_length}


def leaks(folder: Path, lines: set[str]) -> list[str]:
    """'file: line' for each of `lines` found in a file below `folder` (every file, read as bytes)."""
    found = []
    encoded = {line: line.encode("utf-8") for line in lines}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {line}" for line, raw in encoded.items() if raw in data]
    return found
