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
from dataclasses import dataclass
from pathlib import Path

from llmcourse import catalog
from llmcourse.impl import COURSE_ROOT

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
                f"(llmcourse/catalog.py) lists as an exercise of module {module!r}; found it in "
                f"{function or 'module-level code'}"
            )
        message = f"{exercise.id}: {function} is not implemented yet; write your code here"
        out.extend(lines[last: region.begin])
        out.append(f'{region.indent}{STUB_CALL}"{message}")\n')
        last = region.end + 1
    out.extend(lines[last:])
    return "".join(out)


def generate(solutions: Path = COURSE_ROOT / "solutions") -> dict[str, str]:
    """File name -> generated exercise source, for every .py file in solutions/."""
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


def learner_work(generated: dict[str, str], exercises: Path) -> list[str]:
    """Files in exercises/ where a stub was replaced by the learner's own code (a release would overwrite it)."""
    touched = []
    for name, text in generated.items():
        path = exercises / name
        if path.exists():
            current = path.read_text(encoding="utf-8")
            if current != text and current.count(STUB_CALL) < text.count(STUB_CALL):
                touched.append(f"exercises/{name}")
    return touched


def write(generated: dict[str, str], exercises: Path) -> list[str]:
    """Write the generated files; return the names of those that changed."""
    exercises.mkdir(exist_ok=True)
    changed = []
    for name, text in generated.items():
        path = exercises / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed
