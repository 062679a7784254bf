"""The package's modules form layers: no module imports, at the top or inside a function, one that imports it back
(directly or through others). A cycle means two modules that cannot be understood, tested or changed apart. The course
machinery (llmcourse.course) is the top layer under the `llmcourse` command: only the command imports it."""

import ast
import subprocess
import sys
from pathlib import Path

import llmcourse

PACKAGE = Path(llmcourse.__file__).parent
COURSE = "llmcourse.course"
COMMAND = {"llmcourse.cli", "llmcourse.__main__"}  # the `llmcourse` command: the one layer above the course machinery


def _imports() -> dict[str, set[str]]:
    """Module -> the llmcourse modules it imports anywhere in its source (`from llmcourse.course import catalog`
    imports llmcourse.course.catalog)."""
    paths = {".".join(("llmcourse", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): path
             for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import (the package imports absolutely)"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llmcourse":
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in paths else node.module
                          for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("llmcourse.")}
        graph[name] = found - {name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for nxt in graph.get(module, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_graph_is_read_from_the_sources():
    graph = _imports()
    assert "llmcourse.kernels" in graph["llmcourse.quantization"]
    assert "llmcourse.qformats" in graph["llmcourse.kernels"]


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    cycles = [" -> ".join(c) for c in map(lambda m: _cycle_through(graph, m), sorted(graph)) if c]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _in_course(module: str) -> bool:
    return module == COURSE or module.startswith(COURSE + ".")


def test_the_graph_sees_the_course_machinery():
    graph = _imports()
    assert {"llmcourse.course.catalog", "llmcourse.course.fallbacks"} <= graph["llmcourse.course.loader"]
    assert "llmcourse.course.grading.runner" in graph["llmcourse.course.loader"]  # imported inside a function
    assert "llmcourse.course.notebooks" in graph["llmcourse.course.book"]


def test_only_the_command_imports_the_course_machinery():
    """What learners import (llmcourse.gpt, .generate, ...) never reaches the course machinery, at the top of a module
    or inside a function."""
    offenders = [f"{module} imports {', '.join(sorted(filter(_in_course, imports)))}"
                 for module, imports in sorted(_imports().items())
                 if not _in_course(module) and module not in COMMAND and any(map(_in_course, imports))]
    assert not offenders, "only llmcourse/cli.py and __main__.py may import llmcourse.course:\n" + "\n".join(offenders)


def test_importing_the_course_machinery_loads_none_of_it():
    """`import llmcourse.course` is cheap (the CLI's grade and release commands import it); `execute`, the notebook
    runner, comes with nbclient when first asked for."""
    code = ("import sys, llmcourse.course; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('llmcourse', 'nbclient', 'numpy', 'torch')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(loaded) == ["llmcourse", "llmcourse.course"]
    from llmcourse.course import execute
    from llmcourse.course.notebooks import execute as runner
    assert execute is runner
