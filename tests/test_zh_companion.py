"""The Chinese companion in notebooks/zh/: a reading guide per notebook, an index that links them, and a glossary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ZH = NOTEBOOKS / "zh"
INDEX = ZH / "README.md"

# The terms the glossary must hold, each as (Chinese, English) in one row of its table.
GLOSSARY_TERMS = [
    ("词元", "token"), ("分词器", "tokenizer"), ("字节对编码", "BPE"), ("嵌入", "embedding"),
    ("位置编码", "positional encoding"), ("自注意力", "self-attention"), ("因果掩码", "causal mask"),
    ("多头注意力", "multi-head attention"), ("前馈网络", "MLP"), ("多层感知机", "MLP"), ("反向传播", "backpropagation"),
    ("梯度下降", "gradient descent"), ("随机梯度下降", "SGD"), ("小批量", "mini-batch"), ("动量", "momentum"),
    ("学习率", "learning rate"), ("层归一化", "LayerNorm"), ("交叉熵", "cross-entropy"), ("困惑度", "perplexity"),
    ("解码", "decoding"), ("贪心", "greedy"), ("温度", "temperature"), ("束搜索", "beam search"),
    ("推理优化", "inference optimisation"), ("键值缓存", "KV-cache"), ("批处理", "batching"),
    ("连续批处理", "continuous batching"), ("量化", "quantization"), ("反量化", "dequantization"),
    ("分组量化", "group-wise quantization"), ("内存带宽", "memory bandwidth"), ("屋顶线模型", "roofline"),
    ("算术强度", "arithmetic intensity"), ("吞吐量", "throughput"), ("延迟", "latency"),
]


def notebook_stems() -> list[str]:
    return sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))


def glossary_rows() -> list[tuple[str, str, str]]:
    """The rows (Chinese, English, where it first appears) of the index's glossary table."""
    text = INDEX.read_text(encoding="utf-8")
    section = text.split("## 词汇表", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and not set(cells[0]) <= set("-: "):
            rows.append((cells[0], cells[1], cells[2]))
    return rows[1:]  # without the header


def test_there_are_notebooks():
    assert len(notebook_stems()) >= 11, f"expected the course's notebooks in {NOTEBOOKS}"


@pytest.mark.parametrize("stem", notebook_stems())
def test_every_notebook_has_a_guide_that_links_back(stem):
    guide = ZH / f"{stem}.md"
    assert guide.is_file(), f"notebook {stem}.ipynb has no Chinese guide: write notebooks/zh/{stem}.md"
    assert f"](../{stem}.ipynb)" in guide.read_text(encoding="utf-8"), \
        f"{guide.name} must link back to its notebook as ../{stem}.ipynb"


def test_index_links_every_guide():
    text = INDEX.read_text(encoding="utf-8")
    guides = sorted(path.name for path in ZH.glob("*.md") if path != INDEX)
    missing = [name for name in guides if f"]({name})" not in text]
    assert not missing, f"notebooks/zh/README.md does not link these guides: {missing}"


def test_links_between_guides_point_to_guides():
    for path in ZH.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", path.read_text(encoding="utf-8")):
            if not target.startswith("../"):
                assert (ZH / target).is_file(), f"{path.name} links to {target}, which does not exist"


def test_glossary_has_the_terms():
    rows = glossary_rows()
    assert rows, "the index has no glossary table under '## 词汇表'"
    missing = [(zh, en) for zh, en in GLOSSARY_TERMS
               if not any(zh in row[0] and en.lower() in row[1].lower() for row in rows)]
    assert not missing, f"the glossary lacks these (Chinese, English) terms in one row: {missing}"


def test_glossary_says_where_each_term_first_appears():
    guides = {path.name for path in ZH.glob("*.md")}
    for zh, en, where in glossary_rows():
        linked = re.findall(r"\]\(([^)]+\.md)\)", where)
        assert linked and all(name in guides for name in linked), \
            f"glossary row {zh} | {en}: 'first appears' must link a guide of notebooks/zh/, got {where!r}"


@pytest.mark.parametrize("stem", notebook_stems())
def test_every_notebook_opens_with_a_link_to_its_guide(stem):
    import json

    first = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"][0]
    assert f"](zh/{stem}.md)" in "".join(first["source"]), f"{stem}.ipynb's first cell should link zh/{stem}.md"


def test_the_guides_read_as_chinese_prose():
    from llmcourse.data import load_chinese_guides

    text = load_chinese_guides(ZH)
    assert "```" not in text and "](" not in text and "\n|" not in text and "**" not in text, "Markdown left in"
    han = sum("\u4e00" <= c <= "\u9fff" for c in text)
    assert han > 0.4 * len(text), f"only {han} of {len(text)} characters are Chinese: is the markup stripped?"
    assert "词元" in text and "英文原文" in text


def test_reading_guides_from_a_folder_without_them_says_so(tmp_path):
    from llmcourse.data import load_chinese_guides

    with pytest.raises(FileNotFoundError, match="holds no Chinese guides"):
        load_chinese_guides(tmp_path)
