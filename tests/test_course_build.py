"""`make course`: executed notebooks, their HTML copies and an index page with each notebook's run time."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import llmcourse.course as course


def test_build_writes_executed_notebooks_html_and_index(tmp_path, monkeypatch):
    source = tmp_path / "notebooks"
    source.mkdir()
    for name, code in (("00_first.ipynb", "print(6 * 7)"), ("01_second.ipynb", "1 / 0")):
        nb = new_notebook(cells=[new_markdown_cell(f"# Chapter {name[:2]}"), new_code_cell(code)],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        nbformat.write(nb, source / name)
    monkeypatch.setattr(course, "NOTEBOOKS", source)

    results = course.build(tmp_path / "build", fast=True)

    assert [r.path.name for r in results] == ["00_first.ipynb", "01_second.ipynb"]
    assert results[0].errors == [] and results[1].errors == ["cell 1: ZeroDivisionError: division by zero"]
    executed = nbformat.read(tmp_path / "build" / "notebooks" / "00_first.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert "42" in (tmp_path / "build" / "notebooks" / "00_first.html").read_text()
    index = (tmp_path / "build" / "index.html").read_text()
    assert "Chapter 00" in index and 'href="notebooks/01_second.html"' in index
    assert "ZeroDivisionError" in index and " s</td>" in index


def test_a_lettered_notebook_is_a_chapter_between_its_neighbours(tmp_path, monkeypatch):
    for name in ("04_after.ipynb", "03_before.ipynb", "03b_inserted.ipynb", "00_welcome.ipynb", "scratch.ipynb"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(course, "NOTEBOOKS", tmp_path)
    assert [p.name for p in course.notebook_paths()] == ["00_welcome.ipynb", "03_before.ipynb", "03b_inserted.ipynb",
                                                        "04_after.ipynb"]
