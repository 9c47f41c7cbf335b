"""OpenAI's attribute filters, compiled to SQL over a file's attributes.

A filter is a comparison ``{"type": "eq", "key": "k", "value": v}`` (eq, ne, gt, gte, lt, lte;
in, nin with a list) or a compound ``{"type": "and" | "or", "filters": [...]}``, nested at
will. Attributes are a file's, kept as JSON; a key the file lacks fails every comparison but
``ne`` and ``nin``, as in OpenAI's vector stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nobusy.errors import InvalidRequest

__all__ = ["compile_filter"]

_COMPARE = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_MAX_DEPTH = 8


def compile_filter(spec: Mapping[str, Any], column: str = "attributes") -> tuple[str, list[Any]]:
    """SQL (a boolean expression over the JSON ``column``) and its parameters for ``spec``."""
    params: list[Any] = []
    sql = _compile(spec, column, params, 0)
    return sql, params


def _compile(spec: Any, column: str, params: list[Any], depth: int) -> str:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str):
        raise InvalidRequest("filters: each filter is an object with a type", param="filters")
    if depth > _MAX_DEPTH:
        raise InvalidRequest("filters: nested too deep", param="filters")
    kind = spec["type"]
    if kind in ("and", "or"):
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise InvalidRequest(f"filters: {kind} needs a list of filters", param="filters")
        joined = f" {kind.upper()} ".join(_compile(p, column, params, depth + 1) for p in parts)
        return f"({joined})"
    key = spec.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidRequest("filters: a comparison needs a key", param="filters")
    value = spec.get("value")
    # json_each-free path: the key is quoted into a JSON path, its value bound as a parameter.
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    extract = f"json_extract({column}, ?)"
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not all(_scalar(v) for v in value) or not value:
            raise InvalidRequest(f"filters: {kind} needs a list of values", param="filters")
        params.append(path)
        params.extend(_sql_value(v) for v in value)
        marks = ", ".join("?" for _ in value)
        if kind == "in":
            return f"({extract} IN ({marks}))"
        params.append(path)
        return f"({extract} NOT IN ({marks}) OR json_type({column}, ?) IS NULL)"
    if kind not in _COMPARE:
        raise InvalidRequest(f"filters: unknown type {kind!r}", param="filters")
    if not _scalar(value):
        raise InvalidRequest(
            "filters: a comparison's value is a string, number or boolean", param="filters"
        )
    params.extend([path, _sql_value(value)])
    if kind == "ne":
        params.append(path)
        return f"({extract} != ? OR json_type({column}, ?) IS NULL)"
    return f"({extract} {_COMPARE[kind]} ?)"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _sql_value(value: Any) -> Any:
    # json_extract gives JSON true/false as 1/0.
    return int(value) if isinstance(value, bool) else value
