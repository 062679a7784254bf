"""The README's measured figures are the bench's own output: each table between `<!-- bench: FILE -->` and
`<!-- /bench -->` is `llmcourse bench --markdown FILE` of a saved full run, so no figure is typed in by hand."""

import re

from llmcourse import bench
from llmcourse.files import COURSE_ROOT, read_json

BLOCK = re.compile(r"<!-- bench: (?P<file>\S+) -->\n(?P<table>.*?)\n<!-- /bench -->", re.S)


def test_every_bench_table_in_the_readme_is_generated_from_its_saved_run():
    readme = (COURSE_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = list(BLOCK.finditer(readme))
    assert blocks, "the README shows the figures of at least one saved bench run"
    for block in blocks:
        results = read_json(COURSE_ROOT / block["file"], "bench results")
        assert results["quick"] is False, f"{block['file']}: the README shows a full run, not --quick"
        assert block["table"].strip() == bench.markdown_table(results), (
            f"the README's table for {block['file']} differs from `llmcourse bench --markdown {block['file']}`: "
            "paste that command's output")
