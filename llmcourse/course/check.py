"""`llmcourse check`: is this machine ready for the course?"""

from __future__ import annotations

import importlib
import platform
import sys

from llmcourse.course import catalog
from llmcourse.course.impl import Implementation, ImplementationImportError, resolve_impl

PACKAGES = ("numpy", "torch", "jupyterlab", "ipywidgets", "matplotlib", "tqdm", "pytest")


def versions() -> dict[str, str | None]:
    """Python and each package's version, None for a package that is missing."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except ImportError:
            found[name] = None
    return found


def exercise_import_problems(impl: str = "exercises") -> list[str]:
    """One line per module of `impl` that does not import."""
    implementation = Implementation(resolve_impl(impl))
    problems = []
    for module in dict.fromkeys(ex.module for ex in catalog.EXERCISES):
        try:
            implementation.module(module)
        except ImplementationImportError as err:
            problems.append(str(err))
    return problems


def run_check(out=sys.stdout) -> int:
    found = versions()
    missing = [name for name, version in found.items() if version is None]
    for name, version in found.items():
        print(f"{name:<12} {version or 'MISSING'}", file=out)
    device_problem = None
    if "torch" not in missing:
        from llmcourse.runtime import get_device
        try:
            print(f"{'device':<12} {get_device()}", file=out)
        except ValueError as err:
            device_problem = str(err)
            print(f"{'device':<12} NOT AVAILABLE", file=out)
    problems = exercise_import_problems()
    print(f"{'exercises':<12} {'import' if not problems else 'DO NOT IMPORT'}", file=out)
    from llmcourse.course.grading.sandbox import bubblewrap_problem
    sandbox = bubblewrap_problem()  # not an error: a learner grades herself without it
    print(f"{'sandbox':<12} {'bubblewrap' if sandbox is None else 'none: ' + sandbox}", file=out)
    for problem in problems:
        print(f"  {problem}", file=out)
    if missing:
        print(f"Missing: {', '.join(missing)}. Run `make lab` or `pip install -e .` in the course folder.", file=out)
    if problems:
        print("Fix the exercise files named above: each must at least import.", file=out)
    if device_problem:
        print(device_problem, file=out)
    return 1 if missing or problems or device_problem else 0
