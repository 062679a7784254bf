"""The course's files: where the course lies (COURSE_ROOT), files written whole or not at all (checkpoints, results,
bundles), and JSON read with a clear error."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

COURSE_ROOT = Path(__file__).resolve().parent.parent  # the checkout: llmcourse/, notebooks/, exercises/, ...


def write_then_name(folder: str | os.PathLike, write: Callable[[str], None], name: Callable[[Path], str],
                    *, hint: str = "file") -> Path:
    """Call `write(tmp)` on a temporary file in `folder`, flush it to disk, then rename it to `name(tmp)` in one step.

    `name` sees the finished file, so the name can depend on its content. If `write` fails or is interrupted, the
    temporary file is removed and nothing else in `folder` changes. The file is an ordinary one (mode 0644).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{hint}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp (and some writers) make the file private (0600); these are ordinary files
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible: a power cut leaves old or new
        target = folder / name(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it to `path` in one step (os.replace).

    If `write` fails or is interrupted, the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    write_then_name(target.parent, write, lambda _: target.name, hint=target.name)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON in `path`; a one-line ValueError naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({err})") from None
