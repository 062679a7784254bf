"""Load an implementation of the exercises (exercises/, solutions/ or a submission folder) by path.

Each folder is loaded as its own package under a private name, so `solutions.attention` and `exercises.attention`
live side by side in one process, and modules may import their siblings relatively (`from .attention import
softmax`). Nothing is written into the folder: bytecode caching is switched off while it loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from pathlib import Path

from llmcourse.files import COURSE_ROOT

IMPL_ENV = "LLMCOURSE_IMPL"
NAMED_IMPLEMENTATIONS = ("exercises", "solutions")
SOLUTIONS = COURSE_ROOT / "solutions"


class ImplementationImportError(ImportError):
    """A module of the implementation does not import (syntax error, a failing import, an error at import time)."""


class SolutionsMissing(FileNotFoundError):
    """The course has no solutions/ folder: it is a student release (`llmcourse release --student`)."""

    def __init__(self) -> None:
        super().__init__(f"{SOLUTIONS} does not exist: this is a student release, without the reference answers")


def solutions_folder() -> Path:
    """solutions/, or SolutionsMissing in a student release."""
    if not SOLUTIONS.is_dir():
        raise SolutionsMissing()
    return SOLUTIONS


def resolve_impl(name_or_path: str | os.PathLike | None = None) -> Path:
    """Folder of an implementation: "exercises", "solutions", or a path to a folder laid out like exercises/.

    With no argument, `$LLMCOURSE_IMPL` decides, and "exercises" when that is unset.
    """
    choice = str(name_or_path if name_or_path is not None else os.environ.get(IMPL_ENV, "exercises"))
    if choice == "solutions":
        return solutions_folder().resolve()
    folder = COURSE_ROOT / choice if choice in NAMED_IMPLEMENTATIONS else Path(choice).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"implementation folder {str(folder)!r} does not exist: pass 'exercises', 'solutions' or the path "
            "of a folder laid out like exercises/"
        )
    return folder.resolve()


class Implementation:
    """The modules of one implementation folder; `impl.attention` is `<folder>/attention.py`, loaded once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).resolve()
        digest = hashlib.sha1(str(self.folder).encode()).hexdigest()[:10]
        self.package = f"_llmcourse_impl_{self.folder.name}_{digest}"

    def __repr__(self) -> str:
        return f"Implementation({str(self.folder)!r})"

    def __getattr__(self, module: str) -> types.ModuleType:
        if module.startswith("_"):
            raise AttributeError(module)
        return self.module(module)

    def module(self, name: str) -> types.ModuleType:
        """Import `<folder>/<name>.py`; raise ImplementationImportError saying why when it does not import."""
        qualified = f"{self.package}.{name}"
        if qualified in sys.modules:
            return sys.modules[qualified]
        path = self.folder / f"{name}.py"
        if not path.is_file():
            raise ImplementationImportError(f"{name}.py is missing from {self.folder}")
        self._ensure_package()
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        dont_write = sys.dont_write_bytecode
        sys.dont_write_bytecode = True  # never leave __pycache__ in a learner's folder
        try:
            spec.loader.exec_module(module)
        except BaseException as err:  # a learner's module may raise anything, SystemExit included
            del sys.modules[qualified]
            if isinstance(err, KeyboardInterrupt):
                raise
            where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
            raise ImplementationImportError(f"{name}.py does not import{where}: {type(err).__name__}: {err}") from err
        finally:
            sys.dont_write_bytecode = dont_write
        return module

    def function(self, module: str, name: str):
        """The function `name` of `module`, with a clear error when the learner renamed or deleted it."""
        mod = self.module(module)
        try:
            return getattr(mod, name)
        except AttributeError:
            raise ImplementationImportError(
                f"{module}.py has no function {name!r}: keep the name and signature of the stub"
            ) from None

    def _ensure_package(self) -> None:
        if self.package not in sys.modules:
            package = types.ModuleType(self.package)
            package.__path__ = [str(self.folder)]
            package.__file__ = str(self.folder / "__init__.py")
            sys.modules[self.package] = package
