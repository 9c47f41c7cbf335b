"""The chat request as a client sends it: parsed, checked, and turned into clear 400s.

The typed view (msgspec, fast) is for checking and for nobusy's own decisions; the original
dict is what travels upstream, so fields nobusy does not know pass through untouched as
OpenAI-compatible servers expect.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from nobusy.errors import InvalidRequest

__all__ = [
    "ChatRequest",
    "Message",
    "invalid_request",
    "parse_chat_request",
    "parse_json_object",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# orjson reads 1,024 levels of nesting but writes only 254: a body in between would parse here
# and then fail where it is written again (to the upstream, to the audit log). Only a body with
# more brackets than that can be nested that deep, so counting them (at C speed) spares every
# other body the trial serialisation.
_WRITABLE_DEPTH = 254

_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def parse_json_object(raw: bytes, expected: str = "a JSON object") -> dict[str, Any]:
    """A request body that must be one JSON object, or an InvalidRequest saying what is wrong."""
    if not raw.strip():
        raise InvalidRequest(f"The request body is empty; send {expected}.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno})."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > _WRITABLE_DEPTH:
        try:
            orjson.dumps(body)
        except orjson.JSONEncodeError:
            raise InvalidRequest(
                f"The request body is nested too deeply; nobusy passes on at most "
                f"{_WRITABLE_DEPTH} levels of objects and arrays."
            ) from None
    return body


def parse_chat_request(raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Parse a chat request body into (typed view, original dict), or raise InvalidRequest."""
    body = parse_json_object(raw, "a JSON object with `model` and `messages`")
    try:
        request = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    _check(request)
    return request, body


def invalid_request(text: str) -> InvalidRequest:
    """msgspec's validation message as a 400 naming the field (``param``)."""
    # msgspec says e.g. "Expected `array`, got `str` - at `$.messages`".
    match = _MSGSPEC_PATH.search(text)
    param = match.group("path").lstrip(".") if match else None
    what = _MSGSPEC_PATH.sub("", text)
    missing = re.match(r"Object missing required field `(\w+)`", what)
    if missing:
        field = f"{param}.{missing.group(1)}" if param else missing.group(1)
        return InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
    where = f" for '{param}'" if param else ""
    return InvalidRequest(f"Invalid value{where}: {what.replace('`', '')}.", param=param)


def _check(req: ChatRequest) -> None:
    if not req.model:
        raise InvalidRequest("'model' must not be empty.", param="model")
    if not req.messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for i, message in enumerate(req.messages):
        if message.role not in ROLES:
            raise InvalidRequest(
                f"Invalid role '{message.role}' in messages[{i}]; expected one of "
                f"{', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
            )
    if req.n is not None and req.n != 1:
        raise InvalidRequest(
            f"n={req.n} is not supported: nobusy returns one choice per request; "
            "send n=1 or several requests.",
            param="n",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise InvalidRequest(f"'{name}' must be at least 1.", param=name)
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise InvalidRequest("'temperature' must be between 0 and 2.", param="temperature")
    if req.top_p is not None and not 0 <= req.top_p <= 1:
        raise InvalidRequest("'top_p' must be between 0 and 1.", param="top_p")
