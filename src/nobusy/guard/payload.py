"""Every string of a chat request that travels upstream, for the checks that must see all of it.

The sensitive-word guard and PII masking read the whole body, not only message text: names,
tool calls and their arguments, tool descriptions and parameter schemas (their property names
too), ``user``, ``stop``, image URLs and fields nobusy does not know all reach the model or
the upstream's operator. Left out are the values of a few structural keys (``role``, ``model``,
``type``: enums the upstream validates) and base64 payloads (a ``data:`` URL's data,
``input_audio.data``, ``file.file_data``): no one reads words in them, and random base64
spells short words often enough to refuse honest images.

The walk uses its own stack, not recursion: a body may nest as deep as the JSON parser allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from nobusy.errors import ContentFiltered

__all__ = ["STRUCTURAL", "conversation", "copy", "rewrite"]

STRUCTURAL = frozenset({"role", "model", "type"})
# Under which key a base64 field sits: {"input_audio": {"data": ...}}, {"file": {"file_data"}}.
_PAYLOADS = {"input_audio": "data", "file": "file_data"}
_DATA_URL = re.compile(r"data:[^,]{0,256}?;base64,", re.IGNORECASE)

Container = dict[str, Any] | list[Any]


def conversation(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Where the conversation's text lives, in the order the model reads it: each message's
    string content, or the ``text`` of each of its content parts; a text completion's
    ``prompt`` and ``suffix``."""
    for key in ("prompt", "suffix"):
        if isinstance(body.get(key), str):
            yield body, key
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield message, "content"
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part, "text"


def copy(root: dict[str, Any]) -> dict[str, Any]:
    """A copy of every dict and list in ``root`` (strings and numbers are shared)."""
    out = dict(root)
    stack: list[Any] = [out]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                value = dict(value) if isinstance(value, dict) else list(value)
                node[key] = value  # replacing a value while iterating is allowed
                stack.append(value)
    return out


def rewrite(
    root: dict[str, Any],
    fn: Callable[[str], str],
    skip: frozenset[tuple[int, str]] = frozenset(),
) -> None:
    """Replace, in place, every string that goes upstream (dict keys too) by ``fn`` of it.

    ``skip`` holds ``(id(container), key)`` of values the caller has dealt with already."""
    values: list[tuple[Container, Any]] = []
    keys: list[dict[str, Any]] = []
    stack: list[tuple[Container, str | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, dict):
            keys.append(node)
            payload = _PAYLOADS.get(parent or "")
            for key, value in node.items():
                if isinstance(value, str):
                    if key not in STRUCTURAL and key != payload and (id(node), key) not in skip:
                        values.append((node, key))
                elif isinstance(value, dict | list):
                    stack.append((value, key))
        else:
            for index, value in enumerate(node):
                if isinstance(value, str):
                    values.append((node, index))
                elif isinstance(value, dict | list):
                    stack.append((value, parent))
    for container, at in values:
        text = container[at]
        header = _DATA_URL.match(text)
        if header:  # only the media type is text; the rest is base64
            container[at] = fn(text[: header.end()]) + text[header.end() :]
        else:
            container[at] = fn(text)
    names: dict[str, str] = {}  # the same field names recur in every message and tool
    for node in keys:
        renamed = {key: names.get(key) or names.setdefault(key, fn(key)) for key in node}
        if any(new != key for key, new in renamed.items()):
            _rename(node, renamed)


def _rename(node: dict[str, Any], renamed: dict[str, str]) -> None:
    items = [(renamed[key], value) for key, value in node.items()]
    if len({key for key, _ in items}) < len(items):
        # Two field names masked alike would merge two fields into one: refuse instead.
        raise ContentFiltered(
            "The request contains content that this service does not accept "
            "(sensitive-word filter: masking would merge two field names)."
        )
    node.clear()
    node.update(items)
