"""The course as a book (`make course`): every notebook executed headless once, then rendered with its outputs by
Sphinx, myst-nb and sphinx-book-theme into a static site, build/book/, that works from file:// and any static host.

Sphinx rather than Jupyter Book 2: Jupyter Book 2 (mystmd) downloads its site theme from the internet at build time,
while Sphinx, myst-nb and sphinx-book-theme are plain wheels from PyPI (the `book` extra) that build offline. Math is
rendered by MathJax from the `mathjax` package's files, copied into the site, not from a CDN.
"""

from __future__ import annotations

import argparse
import copy
import html
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from llmcourse.course import notebooks
from llmcourse.course.notebooks import ExecutedNotebook, execute_all, notebook_paths
from llmcourse.files import COURSE_ROOT

HERE = Path(__file__).resolve().parent
# The syllabus: each part starts at a chapter number and runs to the next part's first chapter (a new notebook 14
# joins the last part).
PARTS = (("Foundations", "00"), ("The GPT", "04"), ("Inference", "07"), ("Modern models", "11"),
         ("Beyond the basics", "12"))
OPTIMISATIONS_HEADING = "## What the optimisations buy, measured"
BENCH_PLOTS = ("bench_kv_cache.png", "bench_batching.png", "bench_quantization.png")  # what `make bench` writes
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MISSING_TOOLS = "the book needs the course's book tools (Sphinx, myst-nb, sphinx-book-theme, MathJax): run `make " \
                "setup`, or pip install -e '.[book]'"


def syllabus(stems: list[str]) -> list[tuple[str, list[str]]]:
    """The parts of the book with their chapters, e.g. [("Foundations", ["00_welcome", ...]), ...]."""
    parts = [(title, [s for s in stems if start <= s[:2] and (following is None or s[:2] < following)])
             for (title, start), following in zip(PARTS, [p[1] for p in PARTS[1:]] + [None])]
    return [(title, chapters) for title, chapters in parts if chapters]


def notebook_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The notebook's first level-1 heading, e.g. "07 · The KV-cache"."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def readme_section(text: str, heading: str | None) -> str:
    """The README's text under `heading` (a `## ` line, kept) up to the next `## ` heading; with heading None, the
    introduction (after the title, before the first `## `). Links into notebooks/ are made relative to the book."""
    lines = text.splitlines()
    if heading is None:
        start = 1
    elif heading in lines:
        start = lines.index(heading)
    else:
        raise ValueError(f"README.md has no heading {heading!r}: the book's page of measurements is made from it")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip().replace("](notebooks/", "](") + "\n"


def _widget_html(model_id: str, state: dict, controls: list[str]) -> str:
    """HTML for one saved widget and its children; the descriptions of its controls are appended to `controls`."""
    model = state.get(model_id.removeprefix("IPY_MODEL_"))
    if model is None:
        return ""
    name, values = model["model_name"], model["state"]
    if "children" in values:  # HBox, VBox, Box, ...
        inner = "".join(_widget_html(child, state, controls) for child in values["children"])
        return f'<div class="widget-snapshot-{"row" if name == "HBoxModel" else "column"}">{inner}</div>'
    if name == "ImageModel":
        data = next((b["data"] for b in model.get("buffers", []) if b["path"] == ["value"]), None)
        return f'<img src="data:image/{values.get("format", "png")};base64,{data}" alt="">' if data else ""
    if name in ("HTMLModel", "HTMLMathModel"):
        return f"<div>{values.get('value', '')}</div>"
    if name == "LabelModel":
        return f"<div>{html.escape(str(values.get('value', '')))}</div>"
    if "Progress" in name:
        return f'<progress value="{values.get("value", 0)}" max="{values.get("max", 100)}"></progress>'
    if "description" in values and ("value" in values or "index" in values):  # a slider, dropdown, checkbox, ...
        labels, index = values.get("_options_labels"), values.get("index")
        value = labels[index] if labels and isinstance(index, int) else values.get("value")
        controls.append(values["description"])
        return (f'<span class="widget-snapshot-control">{html.escape(values["description"])}: '
                f"<b>{html.escape(str(value))}</b></span>")
    return ""


def static_widgets(notebook: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """A copy of an executed notebook whose widget outputs are static HTML made from their saved state (images,
    text, progress bars, the controls' values as executed), with a note to run explorers live: widgets need a
    kernel, or widget JavaScript that the tools only load from a CDN."""
    notebook = copy.deepcopy(notebook)
    state = notebook.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            controls: list[str] = []
            body = _widget_html(view["model_id"], state, controls)
            note = ("" if body and not controls else
                    f'<p class="widget-snapshot-note">An interactive widget: shown here as executed. Run this chapter '
                    f"live to use it (<code>make lab</code>, or <code>make present NB={stem}</code>).</p>")
            output["data"] = {"text/html": f'<div class="widget-snapshot">{body}{note}</div>'}
    return notebook


def _run_times(results: list[ExecutedNotebook], titles: dict[str, str], fast: bool, jobs: int) -> str:
    rows = []
    for result in results:
        stem = result.path.stem
        errors = "; ".join(f"`{error.replace('`', chr(39))}`" for error in result.errors).replace("|", "\\|")
        rows.append(f"| [{titles[stem]}]({stem}.ipynb) | {result.seconds:.1f} s | "
                    f"{'**failed**: ' + errors if errors else 'ok'} |")
    mode = " in fast mode (`LLMCOURSE_FAST=1`: shorter training loops and sweeps)" if fast else ""
    return (f"Each chapter was executed headless in a fresh kernel{mode}, {jobs} at a time, by `make course` on "
            f"{time.strftime('%Y-%m-%d')} (Python {platform.python_version()}, {os.cpu_count()} cores); "
            f"{sum(r.seconds for r in results):.0f} s of run time in all.\n\n"
            "| chapter | run time | status |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def _toctree(caption: str | None, documents: list[str]) -> str:
    """A hidden toctree: it makes the sidebar (one caption per part) without showing a list on the page."""
    options = (f":caption: {caption}\n" if caption else "") + ":hidden:\n"
    return f"```{{toctree}}\n{options}\n" + "\n".join(documents) + "\n```\n"


def _copy_mathjax(static: Path) -> None:
    """MathJax 3 (TeX input, HTML output, every TeX extension in one file) and its fonts, into the site."""
    import mathjax  # the `book` extra's django-static-mathjax: MathJax's files, no Django needed

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    (static / "mathjax").mkdir(parents=True)
    shutil.copy(es5 / "tex-chtml-full.js", static / "mathjax")
    fonts = Path("output") / "chtml" / "fonts" / "woff-v2"
    shutil.copytree(es5 / fonts, static / "mathjax" / fonts)


def write_source(results: list[ExecutedNotebook], src: Path, *, fast: bool = False, jobs: int = 1,
                 readme: Path = COURSE_ROOT / "README.md", bench: Path | None = None) -> None:
    """Write the book's Sphinx project into `src` (emptied first): the configuration, the executed notebooks, the
    front page (README's introduction, the chapters' run times, the sidebar's parts), the README's measurements
    (with the plots of `make bench` if `bench` holds them), the Chinese companion (notebooks/zh/) and MathJax."""
    if not results:
        raise ValueError("no executed notebooks: the book needs at least one chapter")
    folder = results[0].path.parent  # notebooks/
    if src.exists():
        shutil.rmtree(src)
    (src / "_static").mkdir(parents=True)
    shutil.copy(HERE / "conf.py", src / "conf.py")
    shutil.copy(HERE / "book.css", src / "_static" / "book.css")
    _copy_mathjax(src / "_static")
    figures = readme.parent / "notebooks" / "figures"  # the README's pictures (and the notebooks' own)
    if figures.is_dir():
        shutil.copytree(figures, src / "figures")

    titles = {}
    for result in results:
        stem = result.path.stem
        titles[stem] = notebook_title(result.notebook, stem)
        nbformat.write(static_widgets(result.notebook, stem), src / result.path.name)

    readme_text = readme.read_text(encoding="utf-8")
    measured = readme_section(readme_text, OPTIMISATIONS_HEADING).replace("## ", "# ", 1)
    plots = [name for name in BENCH_PLOTS if bench is not None and (bench / name).is_file()]
    if plots:
        (src / "bench").mkdir()
        for name in plots:
            shutil.copy(bench / name, src / "bench" / name)
        measured += ("\n## Measured on the machine that built this book\n\nThe plots of the last `make bench` in "
                     "`build/`:\n\n" + "\n".join(f"![{name}](bench/{name})" for name in plots) + "\n")
    (src / "optimisations.md").write_text(measured, encoding="utf-8")

    sidebar = "".join(_toctree(title, chapters) for title, chapters in syllabus(list(titles)))
    sidebar += _toctree("Measurements", ["optimisations"])
    zh = folder / "zh"
    if (zh / "README.md").is_file():  # the Chinese companion: its index, with the guides below it in the sidebar
        (src / "zh").mkdir()
        for path in zh.glob("*.md"):
            text = path.read_text(encoding="utf-8").replace("](../../README.md)", "](../index.md)")
            if path.name == "README.md":
                text += "\n" + _toctree(None, [stem for stem in titles if (zh / f"{stem}.md").is_file()])
            (src / "zh" / path.name).write_text(text, encoding="utf-8")
        sidebar += _toctree("中文导读", ["zh/README"])
    front = (f"# {readme_text.splitlines()[0].removeprefix('# ').strip()}\n\n{readme_section(readme_text, None)}\n"
             "The chapters are in the sidebar, by part. [What the optimisations buy, measured](optimisations.md) "
             "collects what the inference chapters measure"
             + ("; [中文导读](zh/README.md) is the Chinese reading guide.\n\n" if (zh / "README.md").is_file()
                else ".\n\n")
             + "## The chapters and how long each took to run\n\n" + _run_times(results, titles, fast, jobs)
             + "\n" + sidebar)
    (src / "index.md").write_text(front, encoding="utf-8")


def build_html(src: Path, out: Path, *, jobs: int = 1) -> list[str]:
    """Run Sphinx on the project in `src` into `out` (emptied first); its warnings, one per line. Sphinx's doctrees
    stay in src/_doctrees, out of the site."""
    if out.exists():
        shutil.rmtree(out)
    doctrees = src / "_doctrees"
    doctrees.mkdir(exist_ok=True)
    warnings = doctrees / "warnings.txt"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", str(jobs), "-d", str(doctrees),
                           "-w", str(warnings), str(src), str(out)])
    if proc.returncode != 0:
        raise SystemExit(f"Sphinx could not build the book (exit code {proc.returncode}): see its messages above")
    return [line for line in warnings.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_tools() -> None:
    try:
        import mathjax  # noqa: F401
        import myst_nb  # noqa: F401
        import sphinx_book_theme  # noqa: F401
    except ImportError:
        raise SystemExit(MISSING_TOOLS) from None


@dataclass
class Book:
    results: list[ExecutedNotebook]
    site: Path  # its front page is site/index.html
    warnings: list[str]

    @property
    def failed(self) -> list[ExecutedNotebook]:
        """The notebooks that raised (their pages show the error)."""
        return [r for r in self.results if r.errors]


def build(out: Path = COURSE_ROOT / "build", *, fast: bool = False, jobs: int = 1,
          log: Callable[[str], None] = print) -> Book:
    """Execute every notebook once (`jobs` at a time) and build the book from the executed copies: the Sphinx project
    in out/book-source/, the site in out/book/. Run times and errors go to `log` and onto the front page; a notebook
    that raises is still in the book (with its error), and in `Book.failed`."""
    _check_tools()
    paths = notebook_paths()
    if not paths:
        raise SystemExit(f"no notebooks to build a book of in {notebooks.NOTEBOOKS}")
    log(f"executing {len(paths)} notebooks, {jobs} at a time ...")
    start = time.perf_counter()
    results = execute_all(paths, fast=fast, jobs=jobs, log=log)
    log(f"executed in {time.perf_counter() - start:.0f} s; building the book ...")
    src, site = out / "book-source", out / "book"
    start = time.perf_counter()
    write_source(results, src, fast=fast, jobs=jobs, bench=out)
    warnings = build_html(src, site, jobs=jobs)
    log(f"built {site / 'index.html'} in {time.perf_counter() - start:.0f} s"
        + (f", with {len(warnings)} Sphinx warning(s) (above)" if warnings else ""))
    return Book(results, site, warnings)


def main(argv: list[str] | None = None) -> int:
    """`make course`: exit code 1 when a notebook raised (the book is built all the same)."""
    parser = argparse.ArgumentParser(prog="python -m llmcourse.course.book",
                                     description="Execute every notebook and build the course as a book.")
    parser.add_argument("--out", type=Path, default=COURSE_ROOT / "build", help="folder for book/ and book-source/")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at a time (default 1)")
    parser.add_argument("--fast", action="store_true", help="execute as the tests do (LLMCOURSE_FAST=1)")
    args = parser.parse_args(argv)
    book = build(args.out, fast=args.fast, jobs=args.jobs)
    for result in book.failed:
        print(f"error: {result.summary}", file=sys.stderr)
    if book.failed:
        print(f"{len(book.failed)} notebook(s) raised: their pages show the errors", file=sys.stderr)
    return 1 if book.failed else 0
