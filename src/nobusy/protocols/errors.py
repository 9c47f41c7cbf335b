"""How each client protocol shapes an error: the one mapping from nobusy's exception tree.

Every error starts as a class of ``nobusy.errors`` with its HTTP status and its body in
OpenAI's shape. A client of the Messages API gets Anthropic's instead,
``{"type": "error", "error": {"type": ..., "message": ...}}``, its ``type`` chosen from the
status as Anthropic's documentation lists them
(https://docs.anthropic.com/en/api/errors). 529 ``overloaded_error`` is kept for nobusy
itself refusing: every route of the alias failed, or the process is stopping; both are
retryable, as Anthropic's SDKs treat 529.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MESSAGES_PREFIX", "anthropic_error", "error_for"]

MESSAGES_PREFIX = "/v1/messages"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# nobusy's own refusals (error codes of nobusy.errors): answered as Anthropic's overload.
_OVERLOADED = frozenset({"all_upstreams_failed", "draining"})


def anthropic_error(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, body) in Anthropic's shape for an error of ``status`` with OpenAI's ``body``."""
    error = body.get("error") or {}
    if error.get("code") in _OVERLOADED:
        status = 529
    kind = _ANTHROPIC_TYPES.get(status) or (
        "invalid_request_error" if status < 500 else "api_error"
    )
    return status, {"type": "error", "error": {"type": kind, "message": error.get("message", "")}}


def error_for(path: str, status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The error as the protocol served at ``path`` shapes it (OpenAI's unless it says)."""
    if path.startswith(MESSAGES_PREFIX):
        return anthropic_error(status, body)
    return status, body
