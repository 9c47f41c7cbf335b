"""The exception tree as drawn is the tree in the code, in errors.py and in the architecture doc.

Every exception class of ``nobusy.errors`` is drawn once, under its base class, with its HTTP
status and OpenAI ``code``; ``docs/architecture.md`` shows the same drawing.
"""

from __future__ import annotations

import inspect
import re

import nobusy.errors
from nobusy.errors import NobusyError
from tests.conftest import ROOT

_LINE = re.compile(r"^(?P<tree>[│├└─ ]*)(?P<name>\w+) +(?P<status>\d{3}) (?P<code>\S+)")


def drawn(text: str) -> list[str]:
    """The lines of the tree in ``text``: from ``NobusyError`` to the first line after it
    that is not part of the drawing."""
    lines = [line.strip("\n") for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("NobusyError "))
    indent = len(lines[start]) - len(lines[start].lstrip())
    tree = []
    for line in lines[start:]:
        if not _LINE.match(line[indent:]):
            break
        tree.append(line[indent:].rstrip())
    return tree


def parsed(tree: list[str]) -> dict[str, tuple[str | None, int, str | None]]:
    """Each class drawn: its parent in the drawing, its status and its code."""
    out: dict[str, tuple[str | None, int, str | None]] = {}
    stack: list[str] = []  # the names on the path to the current line, one per depth
    for line in tree:
        match = _LINE.match(line)
        assert match, line
        depth = len(match["tree"]) // 4
        del stack[depth:]
        name = match["name"]
        assert name not in out, f"{name} drawn twice"
        code = None if match["code"] == "-" else match["code"]
        out[name] = (stack[-1] if stack else None, int(match["status"]), code)
        stack.append(name)
    return out


def in_code() -> dict[str, tuple[str | None, int, str | None]]:
    classes = [
        cls
        for _, cls in inspect.getmembers(nobusy.errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == nobusy.errors.__name__
    ]
    out: dict[str, tuple[str | None, int, str | None]] = {}
    for cls in classes:
        assert issubclass(cls, NobusyError), f"{cls.__name__} is outside the tree"
        (base,) = cls.__bases__
        parent = None if cls is NobusyError else base.__name__
        out[cls.__name__] = (parent, cls.status_code, cls.code)
    return out


def test_the_docstring_draws_every_class_under_its_base() -> None:
    drawing = parsed(drawn(nobusy.errors.__doc__ or ""))
    code = in_code()
    assert sorted(drawing) == sorted(code), "classes missing from or extra in the drawing"
    for name, (parent, status, error_code) in code.items():
        assert drawing[name] == (parent, status, error_code), name


def test_the_architecture_doc_shows_the_docstrings_tree() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert drawn(doc) == drawn(nobusy.errors.__doc__ or "")


def test_every_class_is_exported() -> None:
    assert sorted(in_code()) == sorted(n for n in nobusy.errors.__all__ if n[0].isupper())
