"""bench/README.md lists every benchmark suite, in the order ``python -m bench`` runs them.

The suites are read from the source (``SUITES`` in ``bench/suites/__init__.py`` and each
module's ``SUITE = Suite(name=...)``) rather than imported, so this runs without the bench
extra (matplotlib).
"""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

SUITES_DIR = ROOT / "bench" / "suites"
_ROW = re.compile(r"^\| `(?P<name>[\w-]+)` \| (?P<modules>[^|]+) \| (?P<what>[^|]+) \|$")


def suites() -> dict[str, str]:
    """Each suite's name and the module defining it, in ``SUITES``' order."""
    tree = ast.parse((SUITES_DIR / "__init__.py").read_text())
    (listing,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "SUITES"
    ]
    assert isinstance(listing, ast.DictComp), "SUITES is no longer a comprehension: update me"
    (generator,) = listing.generators
    assert isinstance(generator.iter, ast.Tuple)
    out: dict[str, str] = {}
    for element in generator.iter.elts:
        assert isinstance(element, ast.Attribute) and isinstance(element.value, ast.Name)
        module = element.value.id
        out[suite_name(module)] = module
    return out


def suite_name(module: str) -> str:
    for node in ast.walk(ast.parse((SUITES_DIR / f"{module}.py").read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "Suite":
            for keyword in node.keywords:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    raise AssertionError(f"bench/suites/{module}.py: no Suite(name=...)")


def listed() -> list[tuple[str, str, str]]:
    text = (ROOT / "bench" / "README.md").read_text()
    section = text.split("\n## Suites\n", 1)[1].split("\n## ", 1)[0]
    rows = [_ROW.match(line) for line in section.splitlines()]
    return [(m["name"], m["modules"], m["what"].strip()) for m in rows if m and m["name"]]


def test_the_readme_lists_every_suite_in_order() -> None:
    assert [name for name, _, _ in listed()] == list(suites())


def test_each_suite_names_its_module_and_what_it_measures() -> None:
    modules = suites()
    for name, cell, what in listed():
        assert cell.split(",")[0].strip() == f"`{modules[name]}.py`", name
        assert len(what.split()) >= 5, f"{name}: say what it measures"
