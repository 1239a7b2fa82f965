"""No module of ``src/lmloss`` imports itself through others.

The graph is read from the source with ``ast``: every ``import`` a module holds, at its top
or inside a function (a local import still ties the two modules' designs together); only
``if TYPE_CHECKING:`` blocks, which never run, are left out. ``from package import name``
is an edge to ``package.name`` when that is a module, else to ``package``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SOURCE / "lmloss").rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _runs(node: ast.AST) -> bool:
    """False for the body of ``if TYPE_CHECKING:``."""
    test = getattr(node, "test", None)
    return not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test))


def _imported(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(child for child in ast.iter_child_nodes(node) if _runs(child))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imported(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                edges.add(full if full in modules else base)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``a → b → ... → a``), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_circle_in_lmloss():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_walk_sees_circles_and_local_imports():
    """The checker itself: a circle closed by a function-level import is found, one through a
    TYPE_CHECKING block is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    local = ast.parse("def f():\n    from x import y\nif TYPE_CHECKING:\n    import z\n")
    assert [n.module or n.names[0].name for n in _imported(local)] == ["x"]
    graph = import_graph()
    assert "lmloss.registry" in graph["lmloss.doors"]  # the walk reads real edges
