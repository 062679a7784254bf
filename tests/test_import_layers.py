"""The package's modules form layers: no module imports, at the top or inside a function, one that imports it back
(directly or through others). A cycle means two modules that cannot be understood, tested or changed apart."""

import ast
from pathlib import Path

import llmcourse

PACKAGE = Path(llmcourse.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module -> the llmcourse modules it imports anywhere in its source."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("llmcourse", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import (the package imports absolutely)"
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "llmcourse":
                    found |= {f"llmcourse.{alias.name}" for alias in node.names}
                elif node.module.startswith("llmcourse."):
                    found.add(node.module)
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
