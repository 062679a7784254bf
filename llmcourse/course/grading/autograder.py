"""Gradescope's autograder bundle: `llmcourse autograder --out autograder.zip`.

Gradescope unzips the bundle into /autograder/source and runs its setup.sh once, as root, while it builds the
grading image (Ubuntu, with internet). For each submission it runs run_autograder (copied to
/autograder/run_autograder) with the student's files in /autograder/submission; the score is what that writes to
/autograder/results/results.json. The bundle holds the course's package, graded tests and solutions, so it is the
instructor's file: never hand it to students.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from llmcourse.files import COURSE_ROOT, atomic_write

# What grading needs of the course, relative to COURSE_ROOT: the package (with its assets), the graded tests and
# the conftest that defines their fixtures, the reference answers (the grader's answers for the other exercises a
# function calls), and what `pip install -e` needs. No notebooks, exercises/, build/ or virtual environment.
COURSE_FILES = ("pyproject.toml", "README.md", "llmcourse", "tests/conftest.py", "tests/graded", "solutions")
TORCH = "torch==2.13.0"  # the pin of pyproject.toml, installed first from PyTorch's CPU-only index

SETUP_SH = f"""\
#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder's image (Ubuntu, with internet).
set -euo pipefail

# Python with venv and pip, from Ubuntu's packages.
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip

# The course needs Python 3.10 or newer: Ubuntu 22.04 or later (the base image is chosen in the autograder settings).
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {{
    echo "$(python3 -V) is too old: choose the Ubuntu 22.04 base image (or newer) for this autograder" >&2
    exit 1
}}

# A virtual environment of its own, with a current pip.
python3 -m venv /autograder/venv
/autograder/venv/bin/python -m pip install --upgrade pip

# PyTorch first, from its CPU-only index: from PyPI, pip would fetch a multi-GB CUDA build.
/autograder/venv/bin/python -m pip install "{TORCH}" --index-url https://download.pytorch.org/whl/cpu

# The course itself and the rest of its dependencies, with the grader's extra (bubblewrap, the sandbox).
/autograder/venv/bin/python -m pip install -e "/autograder/source[grader]"

# The reference answers and the tests are root's alone: even an unsandboxed run does not show them to other users.
chmod -R go-rwx /autograder/source/solutions /autograder/source/tests
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for each submission; the score is what it writes to $ROOT/results/results.json.
set -euo pipefail

ROOT="${AUTOGRADER_ROOT:-/autograder}"  # another root only for tests
PYTHON="${LLMCOURSE_PYTHON:-$ROOT/venv/bin/python}"
RESULTS="$ROOT/results/results.json"

# The student's .py files: at the top of the submission, or in its only sub-folder holding .py files (an uploaded
# folder). Symbolic links are never followed.
shopt -s nullglob
folder="$ROOT/submission"
if ! compgen -G "$folder/*.py" > /dev/null; then
    found=()
    for dir in "$ROOT"/submission/*/; do
        dir="${dir%/}"
        [ -L "$dir" ] || [ "$(basename "$dir")" = __MACOSX ] && continue
        compgen -G "$dir/*.py" > /dev/null && found+=("$dir")
    done
    [ "${#found[@]}" -eq 1 ] && folder="${found[0]}"
fi

options=()
[ "${LLMCOURSE_REQUIRE_SANDBOX:-0}" = 1 ] && options+=(--require-sandbox)  # exit 2 where bubblewrap does not work

# Grade with the bundle's own copy of the course: `python -m` puts the current folder first on sys.path, and
# PYTHONPATH does the same for the test processes the grader starts. Extra arguments go to `llmcourse grade`.
mkdir -p "$ROOT/results"
rm -f "$RESULTS"
code=0
(cd "$ROOT/source" && PYTHONPATH="$ROOT/source${PYTHONPATH:+:$PYTHONPATH}" \\
    "$PYTHON" -m llmcourse grade --submission "$folder" --gradescope "$RESULTS" ${options[@]+"${options[@]}"} "$@") \\
    || code=$?

# 0 (full marks), 1 (points lost) and 2 (the grader could not run, which results.json says) are all results: the
# score is in results.json, so exit 0. A non-zero exit is kept for a grader that died or wrote no results.
if [ "$code" -gt 2 ] || [ ! -s "$RESULTS" ]; then
    rm -f "$RESULTS"
    echo "run_autograder: the grader did not finish (exit code $code); no results were written" >&2
    exit 1
fi
exit 0
"""


def _course_files() -> list[Path]:
    """The files of COURSE_FILES, sorted; no __pycache__, bytecode or hidden files."""
    files = []
    for name in COURSE_FILES:
        path = COURSE_ROOT / name
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is missing: the autograder bundle needs it")
        for file in path.rglob("*"):
            parts = file.relative_to(COURSE_ROOT).parts
            if file.is_file() and file.suffix != ".pyc" and not any(
                    part == "__pycache__" or part.startswith(".") for part in parts):
                files.append(file)
    return sorted(files)


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # a fixed date: the same course, the same zip
    info.external_attr = (0o100755 if executable else 0o100644) << 16  # a regular file and its permissions
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build_bundle(out: Path) -> Path:
    """Write Gradescope's autograder zip to `out` (whole or not at all) and return its path: setup.sh and
    run_autograder at the top, next to the course files grading needs (COURSE_FILES)."""
    out = Path(out).expanduser().resolve()
    files = _course_files()

    def write(path: str) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            _add(archive, "setup.sh", SETUP_SH.encode(), executable=True)
            _add(archive, "run_autograder", RUN_AUTOGRADER.encode(), executable=True)
            for file in files:
                _add(archive, file.relative_to(COURSE_ROOT).as_posix(), file.read_bytes())

    atomic_write(out, write)
    return out
