"""The package's modules import each other without a cycle, lazy imports included.

Every `import`/`from ... import` anywhere in a module counts: at the top, inside a function
(a lazy import is still a dependency, only a deferred one) and under `if TYPE_CHECKING:` (a
type is a dependency too), and so does an import string naming a module ("nobusy.app:create_app"
for uvicorn, a kind's module in `upstreams.KINDS`; logger names are not imports). `from
nobusy.x import y` is an edge to the module `nobusy.x.y` when that is a module, else to
`nobusy.x`; a package's `__init__.py` is the package itself. The implicit import of a parent
package by its submodules is not counted, so a package may re-export its own modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "nobusy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` (at `path`) imports anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    loggers = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "getLogger"
        for arg in node.args
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.partition(":")[0] in known
            and "." in node.value  # a bare "nobusy" is the logger's or the program's name
            and id(node) not in loggers
        ):
            targets = [node.value.partition(":")[0]]
        else:
            continue
        for target in targets:
            # `import nobusy.a.b` names the module itself; walk up to the nearest known one.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.split(".")[0] == PACKAGE and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = modules()
    known = set(paths)
    return {name: imported(name, path, known) for name, path in paths.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [shortest_cycle(min(group), edges, group) for group in groups]


def shortest_cycle(start: str, edges: dict[str, set[str]], group: set[str]) -> list[str]:
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def test_the_walker_sees_lazy_type_checking_and_string_imports() -> None:
    edges = graph()
    assert "nobusy.app" in edges["nobusy.edge.server"]  # inside run(); uvicorn's import string
    assert "nobusy.routing.stats" in edges["nobusy.metrics"]  # under `if TYPE_CHECKING:` only
    assert "nobusy.upstreams.openai" in edges["nobusy.upstreams"]  # a kind's import string
    assert "nobusy.errors" in edges["nobusy.routing.router"]  # `from nobusy.errors import ...`


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]


def test_no_import_cycle() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" → ".join(cycle) for cycle in found)
