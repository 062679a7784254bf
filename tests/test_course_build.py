"""`make course`: the course as a book (llmcourse.course.book), built by Sphinx from the notebooks executed headless.

The real book is tested as the `built_book` fixture (tests/conftest.py) builds it: from the notebooks that
tests/test_notebooks.py executes anyway, each executed once per run and shared between test processes through files
and a lock per notebook. Executing them again here would cost minutes of the test budget; a small fake course would
leave the real pages (math, links between chapters and the Chinese guides, widgets) untested. What the fixture does
not run, `make course`'s own path (executing, run times, exit code when a notebook raises), is tested on a fake
course of two tiny notebooks.
"""

from __future__ import annotations

import base64
import html
import json
import re

import nbformat
import pytest
from bs4 import BeautifulSoup
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from llmcourse.course import book, notebooks
from llmcourse.files import COURSE_ROOT

KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3"}}
STEMS = [path.stem for path in notebooks.notebook_paths()]
# The captions of the book's sidebar, in order: the syllabus's parts, then the measurements and the Chinese guides.
CAPTIONS = ["Foundations", "The GPT", "Inference", "Modern models", "Beyond the basics", "Measurements", "中文导读"]


def _write_course(folder, chapters: dict[str, list]) -> None:
    folder.mkdir()
    for name, cells in chapters.items():
        nbformat.write(new_notebook(cells=cells, metadata=KERNEL), folder / name)


def test_a_lettered_notebook_is_a_chapter_between_its_neighbours(tmp_path, monkeypatch):
    for name in ("04_after.ipynb", "03_before.ipynb", "03b_inserted.ipynb", "00_welcome.ipynb", "scratch.ipynb"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(notebooks, "NOTEBOOKS", tmp_path)
    assert [p.name for p in notebooks.notebook_paths()] == ["00_welcome.ipynb", "03_before.ipynb",
                                                           "03b_inserted.ipynb", "04_after.ipynb"]


def test_the_syllabus_puts_each_chapter_in_its_part():
    parts = dict(book.syllabus(["00_a", "03_b", "03b_c", "04_d", "06_e", "07_f", "10_g", "11_h", "12_i", "14_new"]))
    assert parts == {"Foundations": ["00_a", "03_b", "03b_c"], "The GPT": ["04_d", "06_e"],
                     "Inference": ["07_f", "10_g"], "Modern models": ["11_h"], "Beyond the basics": ["12_i", "14_new"]}
    assert [title for title, _ in book.syllabus(["00_a", "12_i"])] == ["Foundations", "Beyond the basics"]


PNG = base64.b64encode(b"\x89PNG fake image").decode()


def _widget_notebook() -> nbformat.NotebookNode:
    """An executed notebook with an explorer (slider, dropdown, image, text) and a tqdm-like progress bar."""
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_row", "IPY_MODEL_img", "IPY_MODEL_txt"]}},
        "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_head", "IPY_MODEL_bits"]}},
        "head": {"model_name": "IntSliderModel", "state": {"description": "head", "value": 2}},
        "bits": {"model_name": "DropdownModel", "state": {"description": "bits", "index": 1,
                                                          "_options_labels": ["8", "4"]}},
        "img": {"model_name": "ImageModel", "state": {"format": "png"},
                "buffers": [{"data": PNG, "encoding": "base64", "path": ["value"]}]},
        "txt": {"model_name": "HTMLModel", "state": {"value": "<i>head 2 looks back</i>"}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_pct", "IPY_MODEL_prog"]}},
        "pct": {"model_name": "HTMLModel", "state": {"value": "training: 100%"}},
        "prog": {"model_name": "FloatProgressModel", "state": {"value": 50.0, "max": 50.0}},
    }

    def view(model_id):
        return new_output("display_data", data={book.WIDGET_VIEW: {"model_id": model_id, "version_major": 2},
                                                "text/plain": "VBox(...)"})

    cells = [new_code_cell("explorer()", outputs=[view("box")]), new_code_cell("train()", outputs=[view("bar")]),
             new_code_cell("gone()", outputs=[view("missing")])]
    return new_notebook(cells=cells, metadata={"widgets": {book.WIDGET_STATE: {"state": state}}})


def test_widgets_become_static_snapshots_of_their_saved_state():
    notebook = _widget_notebook()
    static = book.static_widgets(notebook, "02_self_attention")
    explorer, bar, missing = (cell.outputs[0].data for cell in static.cells)
    assert set(explorer) == {"text/html"} and "widgets" not in static.metadata
    page = explorer["text/html"]
    assert f'src="data:image/png;base64,{PNG}"' in page
    assert "head: <b>2</b>" in page and "bits: <b>4</b>" in page and "<i>head 2 looks back</i>" in page
    assert "make present NB=02_self_attention" in page, "an explorer says how to run it live"
    assert '<progress value="50.0" max="50.0">' in bar["text/html"] and "training: 100%" in bar["text/html"]
    assert "make lab" not in bar["text/html"], "a progress bar has no control to run live"
    assert "make lab" in missing["text/html"], "a widget without saved state still says how to see it"
    assert book.WIDGET_VIEW in notebook.cells[0].outputs[0].data, "the executed notebook itself is left as it was"


def test_the_measurements_page_is_the_readmes_section():
    text = (COURSE_ROOT / "README.md").read_text(encoding="utf-8")
    section = book.readme_section(text, book.OPTIMISATIONS_HEADING)
    assert section.startswith(book.OPTIMISATIONS_HEADING) and "| figure | measured |" in section
    assert "](figures/bench_kv_cache.png)" in section and "](notebooks/" not in section
    assert "## " not in section[3:], "the section ends at the next heading"
    with pytest.raises(ValueError, match="README.md has no heading '## Nope'"):
        book.readme_section(text, "## Nope")


def test_execute_all_keeps_the_order_and_logs_each_run(tmp_path):
    _write_course(tmp_path / "nb", {"00_a.ipynb": [new_code_cell("import time; time.sleep(1.5); print('a')")],
                                    "01_b.ipynb": [new_code_cell("import os; print(os.environ['OMP_NUM_THREADS'])")]})
    lines = []
    results = notebooks.execute_all(sorted((tmp_path / "nb").glob("*.ipynb")), fast=True, jobs=2, log=lines.append)
    assert [r.path.name for r in results] == ["00_a.ipynb", "01_b.ipynb"]
    assert results[1].notebook.cells[0].outputs[0]["text"] == "1\n", "two at a time: one math thread each"
    assert sorted(line.split(":")[0].strip() for line in lines) == ["00_a.ipynb", "01_b.ipynb"]
    with pytest.raises(ValueError, match="jobs=0"):
        notebooks.execute_all([], fast=True, jobs=0)


def _soup(path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _run_time_rows(site) -> list[list[str]]:
    """The front page's table of chapters: [chapter, run time, status] per row, as text."""
    rows = _soup(site / "index.html").select("table tbody tr")
    return [[" ".join(td.get_text(" ", strip=True).split()) for td in row.select("td")] for row in rows]


@pytest.mark.slow
def test_make_course_builds_the_book_reports_run_times_and_fails_when_a_notebook_raises(tmp_path, monkeypatch,
                                                                                          capsys):
    folder = tmp_path / "notebooks"
    _write_course(folder, {
        "00_first.ipynb": [new_markdown_cell("# 00 · First\n\nThe energy $E = mc^2$."), new_code_cell("print(6 * 7)")],
        "01_second.ipynb": [new_markdown_cell("# 01 · Second"), new_code_cell("1 / 0")]})
    (folder / "zh").mkdir()
    (folder / "zh" / "README.md").write_text("# 中文导读\n\n[00](00_first.md)\n", encoding="utf-8")
    (folder / "zh" / "00_first.md").write_text("# 00 · 第一章\n\n[原文](../00_first.ipynb)\n", encoding="utf-8")
    monkeypatch.setattr(notebooks, "NOTEBOOKS", folder)

    assert book.main(["--out", str(tmp_path / "build"), "--fast", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "error: 01_second.ipynb: " in err and "ZeroDivisionError: division by zero" in err

    site = tmp_path / "build" / "book"
    first, second = _run_time_rows(site)
    assert first[0] == "00 · First" and re.fullmatch(r"\d+\.\d s", first[1]) and first[2] == "ok"
    assert second[2] == "failed : cell 1: ZeroDivisionError: division by zero"
    assert "42" in (site / "00_first.html").read_text(encoding="utf-8")
    assert "ZeroDivisionError" in (site / "01_second.html").read_text(encoding="utf-8")
    assert (site / "zh" / "00_first.html").is_file()
    assert (tmp_path / "build" / "book-source" / "_doctrees" / "warnings.txt").read_text() == ""
    executed = nbformat.read(tmp_path / "build" / "book-source" / "00_first.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"




# The real book, as `built_book` builds it once per run (from the notebooks executed for tests/test_notebooks.py).

@pytest.mark.slow
@pytest.mark.timeout(1800)  # it may have to execute every notebook itself (run alone, without test_notebooks.py)
def test_the_book_has_a_page_per_notebook_listed_in_the_sidebar_in_order(built_book):
    assert built_book.warnings == [], "Sphinx warned:\n" + "\n".join(built_book.warnings)
    missing = [stem for stem in STEMS if not (built_book.site / f"{stem}.html").is_file()]
    assert not missing, f"no page for {missing}"

    nav = _soup(built_book.site / "index.html").select_one("nav.bd-docs-nav")
    assert [caption.get_text(strip=True) for caption in nav.select("p.caption")] == CAPTIONS
    chapters = [a["href"].removesuffix(".html") for a in nav.select("li.toctree-l1 > a")
                if a["href"].removesuffix(".html") in STEMS]
    assert chapters == STEMS, "the sidebar lists the chapters in the syllabus's order"
    foundations = nav.select("p.caption")[0].find_next_sibling("ul")
    assert [a["href"] for a in foundations.select("li.toctree-l1 > a")][-1] == "03b_gradient_descent.html"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_front_page_reports_each_notebooks_run_time(built_book):
    cells = _run_time_rows(built_book.site)
    assert [c[0].split(" ")[0] for c in cells] == [stem.split("_")[0] for stem in STEMS]
    assert all(re.fullmatch(r"\d+\.\d s", c[1]) and c[2] == "ok" for c in cells), cells


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_math_is_rendered_by_a_mathjax_shipped_with_the_book(built_book):
    source = nbformat.read(built_book.source / "03_mlp_and_backprop.ipynb", as_version=4)
    markdown = "\n".join(cell.source for cell in source.cells if cell.cell_type == "markdown")
    expression = re.search(r"(?<!\$)\$([^$\n]+)\$(?!\$)", markdown).group(1)  # the first inline $...$
    page = (built_book.site / "03_mlp_and_backprop.html").read_text(encoding="utf-8")
    assert f'<span class="math notranslate nohighlight">\\({html.escape(expression, quote=False)}\\)</span>' in page
    assert f"${expression}$" not in page and f"${html.escape(expression, quote=False)}$" not in page
    assert '<script defer="defer" src="_static/mathjax/tex-chtml-full.js' in page
    assert (built_book.site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def _distinctive_word(stem: str) -> str:
    """The first (alphabetically) word of 6+ letters in notebook `stem`'s markdown that no other notebook uses."""
    def words(name: str) -> set[str]:
        notebook = nbformat.read(notebooks.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        return set(re.findall(r"\b[a-z]{6,}\b", "\n".join(c.source for c in notebook.cells).lower()))
    others = set().union(*(words(other) for other in STEMS if other != stem))
    return min(words(stem) - others)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_search_finds_a_word_that_only_notebook_07_uses(built_book):
    from sphinx.search.en import SearchEnglish

    word = _distinctive_word("07_kv_cache")
    script = (built_book.site / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(script.removeprefix("Search.setIndex(").removesuffix(")"))
    hits = index["terms"].get(SearchEnglish({}).stem(word))
    assert hits is not None, f"the search index has no entry for {word!r}, a word of notebook 07"
    pages = [index["docnames"][i] for i in ([hits] if isinstance(hits, int) else hits)]
    assert "07_kv_cache" in pages, f"searching {word!r} finds {pages}, not notebook 07"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_book_is_self_contained_with_widgets_measurements_and_the_chinese_guides(built_book):
    site = built_book.site
    pages = sorted(site.rglob("*.html"))
    external = [f"{p.relative_to(site)}: {tag}" for p in pages for tag in _soup(p).select("script[src], link[href]")
                if tag.name == "script" and tag["src"].startswith(("http:", "https:", "//"))
                or tag.name == "link" and "stylesheet" in tag.get("rel", []) and tag["href"].startswith(("http", "//"))]
    assert not external, "the book must work offline; it loads:\n" + "\n".join(external)

    explorer = _soup(site / "02_self_attention.html").select(".widget-snapshot")
    assert explorer and explorer[0].select_one('img[src^="data:image/png;base64,"]'), "the explorer's heatmap"
    assert "make present NB=02_self_attention" in explorer[0].get_text(" ")

    measured = (site / "optimisations.html").read_text(encoding="utf-8")
    assert "KV-cache vs recomputing" in measured and "_images/bench_kv_cache" in measured

    guides = sorted(path.stem for path in (COURSE_ROOT / "notebooks" / "zh").glob("*.md"))
    assert sorted(path.stem for path in (site / "zh").glob("*.html")) == guides
    zh = _soup(site / "zh" / "07_kv_cache.html")
    assert zh.select_one('a[href="../07_kv_cache.html"]'), "a Chinese guide links to its chapter's page"
