"""The course's text corpus: offline on any machine with Python, replaceable by any UTF-8 text file.

By default it is the documentation CPython ships in `pydoc_data.topics` (the text `help()` shows): about 0.47 MB of
English prose and Python code, present wherever Python is installed, so nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

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
