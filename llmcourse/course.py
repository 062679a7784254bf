"""Execute the course's notebooks headless: for the tests, and for `make course` (executed copies, HTML, index)."""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from llmcourse.impl import COURSE_ROOT
from llmcourse.runtime import FAST_ENV

NOTEBOOKS = COURSE_ROOT / "notebooks"


@dataclass
class ExecutedNotebook:
    path: Path
    notebook: nbformat.NotebookNode
    seconds: float

    @property
    def errors(self) -> list[str]:
        """One line per error output (an exception shown in a cell)."""
        found = []
        for index, cell in enumerate(self.notebook.cells):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    found.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
        return found


def notebook_paths() -> list[Path]:
    """The chapters in order: 00_welcome.ipynb, ..., 03_x.ipynb, 03b_y.ipynb, 04_z.ipynb (a letter inserts a chapter)."""
    return sorted(p for pattern in ("[0-9][0-9]_*.ipynb", "[0-9][0-9][a-z]_*.ipynb") for p in NOTEBOOKS.glob(pattern))


def stored_outputs(path: Path) -> list[int]:
    """Indices of code cells that were committed with outputs or execution counts (they must be stored clean)."""
    notebook = nbformat.read(path, as_version=4)
    return [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]


def execute(path: Path, *, fast: bool, cell_timeout: int = 600) -> ExecutedNotebook:
    """Run a notebook top to bottom in a fresh kernel, in its own folder; errors stay in the outputs
    (`allow_errors`) so that every failing cell is reported, not only the first."""
    notebook = nbformat.read(path, as_version=4)
    previous = os.environ.get(FAST_ENV)
    os.environ[FAST_ENV] = "1" if fast else "0"  # the kernel inherits this process's environment
    try:
        client = NotebookClient(notebook, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop(FAST_ENV, None)
        else:
            os.environ[FAST_ENV] = previous
    return ExecutedNotebook(path, notebook, seconds)


def build(out: Path = COURSE_ROOT / "build", *, fast: bool = False) -> list[ExecutedNotebook]:
    """Execute every notebook into out/notebooks/ with an HTML copy of each, and write out/index.html."""
    from nbconvert import HTMLExporter

    target = out / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    done = []
    for path in notebook_paths():
        print(f"executing {path.name} ...", flush=True)
        result = execute(path, fast=fast)
        nbformat.write(result.notebook, target / path.name)
        body, _ = exporter.from_notebook_node(result.notebook)
        (target / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
        print(f"  {result.seconds:.1f} s" + (f", {len(result.errors)} error(s)" if result.errors else ""))
        done.append(result)
    (out / "index.html").write_text(index_page(done), encoding="utf-8")
    return done


def _title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def index_page(results: list[ExecutedNotebook]) -> str:
    rows = "\n".join(
        f'<tr><td><a href="notebooks/{r.path.with_suffix(".html").name}">{html.escape(_title(r.notebook, r.path.stem))}'
        f'</a></td><td><a href="notebooks/{r.path.name}">{r.path.name}</a></td><td>{r.seconds:.1f} s</td>'
        f'<td>{"ok" if not r.errors else html.escape("; ".join(r.errors))}</td></tr>'
        for r in results)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmcourse</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.3em .8em;text-align:left}}</style>
</head><body><h1>llmcourse: how LLMs work and how their inference is made fast</h1>
<table><tr><th>chapter</th><th>notebook</th><th>run time</th><th>status</th></tr>
{rows}
</table></body></html>
"""
