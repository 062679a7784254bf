"""Execute the course's notebooks headless: for the tests, and for `make course` (which makes a book of them,
llmcourse.course.book)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient

from llmcourse.files import COURSE_ROOT
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

    @property
    def summary(self) -> str:
        """`07_kv_cache.ipynb: 50.1 s`, and the errors if any: one line for a build log."""
        errors = self.errors
        return f"{self.path.name}: {self.seconds:.1f} s" + (f", {len(errors)} error(s): {errors[0]}" if errors else "")


def notebook_paths() -> list[Path]:
    """The chapters in order: 00_welcome.ipynb, ..., 03_x.ipynb, 03b_y.ipynb, 04_z.ipynb (a letter inserts one)."""
    return sorted(p for pattern in ("[0-9][0-9]_*.ipynb", "[0-9][0-9][a-z]_*.ipynb") for p in NOTEBOOKS.glob(pattern))


def stored_outputs(path: Path) -> list[int]:
    """Indices of code cells that were committed with outputs or execution counts (they must be stored clean)."""
    notebook = nbformat.read(path, as_version=4)
    return [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]


def execute(path: Path, *, fast: bool, cell_timeout: int = 600, threads: int | None = None) -> ExecutedNotebook:
    """Run a notebook top to bottom in a fresh kernel, in its own folder; errors stay in the outputs
    (`allow_errors`) so that every failing cell is reported, not only the first. `threads` caps the kernel's math
    threads (OMP_NUM_THREADS); the widgets' state is stored in the notebook's metadata."""
    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ, **{FAST_ENV: "1" if fast else "0"})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    client = NotebookClient(notebook, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=env)  # the kernel's environment
    return ExecutedNotebook(path, notebook, time.perf_counter() - start)


def execute_all(paths: list[Path], *, fast: bool, jobs: int = 1,
                log: Callable[[str], None] = print) -> list[ExecutedNotebook]:
    """Execute the notebooks `jobs` at a time, logging each one's run time (and errors) as it ends; results in the
    order of `paths`. With jobs > 1 each kernel gets one math thread, so that they do not fight over the cores."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: run at least one notebook at a time")

    def run(path: Path) -> ExecutedNotebook:
        result = execute(path, fast=fast, threads=1 if jobs > 1 else None)
        log(f"  {result.summary}")
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, paths))
