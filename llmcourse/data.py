"""The course's text corpus: offline on any machine with Python, replaceable by any UTF-8 text file.

By default it is the documentation CPython ships in `pydoc_data.topics` (the text `help()` shows): about 0.47 MB of
English prose and Python code, present wherever Python is installed, so nothing is downloaded. The course's Chinese
text is its own reading guides (notebooks/zh/), as prose: `load_chinese_guides()`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llmcourse.files import COURSE_ROOT

CORPUS_ENV = "LLMCOURSE_CORPUS"


def load_corpus(path: str | os.PathLike | None = None) -> str:
    """The corpus text: `path`, else `$LLMCOURSE_CORPUS`, else Python's own pydoc topics (deterministic order)."""
    path = path or os.environ.get(CORPUS_ENV)
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"corpus file {str(file)!r} does not exist: pass the path of a UTF-8 text file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"corpus file {str(file)!r} is not UTF-8 text ({err.reason} at byte {err.start})") \
                from None
        if not text.strip():
            raise ValueError(f"corpus file {str(file)!r} is empty: pass a UTF-8 text file with some text in it")
        return text
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split text into (train, validation): the last `val_fraction` of the characters is held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


ZH_GUIDES = COURSE_ROOT / "notebooks" / "zh"
# Markdown that is not prose goes (fenced code, tables, $formulas$); `code` and links keep their words, markup goes.
_NOT_PROSE = [(re.compile(r"^```.*?^```[^\n]*\n", re.S | re.M), ""), (re.compile(r"^\|.*\n", re.M), ""),
              (re.compile(r"\$\$?[^$]+\$\$?"), ""), (re.compile(r"`([^`\n]*)`"), r"\1"),
              (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"), (re.compile(r"^(#+|>) ?|\*+", re.M), ""),
              (re.compile(r"[ \t]*\n[ \t]*\n\s*"), "\n\n")]


def load_chinese_guides(folder: str | os.PathLike | None = None) -> str:
    """The prose of the course's Chinese reading guides, `folder`/NN_*.md (default notebooks/zh/) in the order of
    the chapters: the Markdown's code blocks, formulas and tables removed, the words of inline code and links kept."""
    folder = Path(folder) if folder is not None else ZH_GUIDES
    guides = sorted(folder.glob("[0-9]*.md"))
    if not guides:
        raise FileNotFoundError(f"{str(folder)!r} holds no Chinese guides (NN_*.md): pass the course's notebooks/zh "
                                "folder")
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in guides)
    for pattern, replacement in _NOT_PROSE:
        text = pattern.sub(replacement, text)
    return text.strip() + "\n"
