"""Placeholder until the judge exists."""

from __future__ import annotations

from typing import Any


def judge_plumbing() -> dict[str, Any]:
    return {
        "quotes_sent": 0,
        "quotes_kept": 0,
        "quotes_dropped": 0,
        "anonymised": "no",
        "decided_by": "-",
    }
