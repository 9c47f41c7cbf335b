"""nobusy's exception tree, and the one place it becomes an OpenAI-shaped error.

    NobusyError                     500 -                       every error nobusy raises
    ├── ClientError                 400 -                       the request is wrong: not retried
    │   ├── InvalidRequest          400 -                       malformed or unsupported
    │   ├── RequestTooLarge         413 request_too_large       body over max_body_bytes
    │   ├── RequestTimeout          408 request_timeout         body too slow to arrive
    │   ├── UnsupportedMediaType    415 unsupported_media_type  a JSON endpoint sent no JSON
    │   ├── HeadersTooLarge         431 headers_too_large       too many or too large headers
    │   ├── HostNotAllowed          421 host_not_allowed        a Host not served (rebinding)
    │   ├── OriginNotAllowed        403 origin_not_allowed      a browser page from elsewhere
    │   ├── ModelNotFound           404 model_not_found         not a configured alias
    │   ├── NotFound                404 not_found               no such path
    │   ├── ContentFiltered         400 content_filter          a blocked word in the request
    │   ├── InvalidApiKey           401 invalid_api_key         missing, malformed or unknown
    │   │   ├── KeyRevoked          401 key_revoked
    │   │   └── KeyExpired          401 key_expired
    │   ├── KeyNameTaken            409 key_name_taken          creating a key: name in use
    │   ├── RateLimited             429 rate_limit_exceeded     a key's rpm/tpm/concurrency
    │   ├── QuotaExhausted          429 insufficient_quota      a key's balance is spent
    │   ├── ModelNotAllowed         403 model_not_allowed       outside the key's model list
    │   ├── PermissionDenied        403 permission_denied       granted to read, not to change
    │   ├── LocalOnlyStore          403 local_only_store        its passages stay on premises
    │   ├── QueueFull               429 queue_full              the wait would pass patience
    │   ├── QueueTimeout            429 queue_timeout           waited the whole patience
    │   └── AdminAuthRequired       401 invalid_api_key         admin endpoint without the key
    ├── UpstreamError               502 upstream_error          one attempt failed: retryable
    │   ├── UpstreamUnreachable     502 upstream_unreachable    refused/reset, DNS, TLS
    │   ├── UpstreamTimeout         504 upstream_timeout        no first token, idle gap, hung
    │   ├── UpstreamOverloaded      503 upstream_overloaded     429, 503, 529 (+ retry_after)
    │   ├── UpstreamAuthFailed      502 upstream_auth_failed    401/403: our config is wrong
    │   ├── UpstreamProtocolError   502 upstream_protocol_error bad SSE/JSON, error in a 200
    │   ├── UpstreamEjected         503 upstream_ejected        not tried: its circuit is open
    │   ├── RetryBudgetSpent        502 upstream_error          not tried: retry budget spent
    │   └── UpstreamRejectedRequest 400 invalid_request         request invalid: not retried
    ├── AllUpstreamsFailed          503 all_upstreams_failed    every route of an alias failed
    ├── StorageUnavailable          503 storage_unavailable     SQLite locked or failing
    ├── Draining                    503 draining                the process is stopping
    └── ConfigError                 500 -                       start-up: a wrong key or value

Each line gives the class's HTTP status and OpenAI error ``code`` (``-``: none). Each class
carries them, its error ``type`` and whether another upstream could succeed (``retryable``:
only ``UpstreamError`` and its subclasses but ``UpstreamRejectedRequest``). ``message`` is for
the server's log and the admin endpoints; ``body()`` is what a client sees, and for upstream
failures it names the upstream and what went wrong, never an internal host or port. Upstream
kinds translate foreign errors (aiohttp and httpx-sse for ``openai``, llama.cpp for
``embedded``) into these at their boundary; routing and the HTTP layer see only this tree,
and ``nobusy.responses`` turns them into responses. ``tests/test_errors.py`` checks that the
tree is the code's, here and in ``docs/architecture.md``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "AdminAuthRequired",
    "AllUpstreamsFailed",
    "ClientError",
    "ConfigError",
    "ContentFiltered",
    "Draining",
    "HeadersTooLarge",
    "HostNotAllowed",
    "InvalidApiKey",
    "InvalidRequest",
    "KeyExpired",
    "KeyNameTaken",
    "KeyRevoked",
    "LocalOnlyStore",
    "ModelNotAllowed",
    "QuotaExhausted",
    "RateLimited",
    "StorageUnavailable",
    "ModelNotFound",
    "NobusyError",
    "NotFound",
    "PermissionDenied",
    "OriginNotAllowed",
    "QueueFull",
    "QueueTimeout",
    "RetryBudgetSpent",
    "RequestTimeout",
    "RequestTooLarge",
    "UnsupportedMediaType",
    "UpstreamAuthFailed",
    "UpstreamEjected",
    "UpstreamError",
    "UpstreamOverloaded",
    "UpstreamProtocolError",
    "UpstreamRejectedRequest",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "error_body",
]


class NobusyError(Exception):
    """Base of every error nobusy raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def public_message(self) -> str:
        """The message a client is shown; subclasses holding internal detail override it."""
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.public_message, self.error_type, self.param, self.code)


class ClientError(NobusyError):
    """The client's request is wrong; retrying it anywhere gives the same answer."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    """Malformed JSON, a wrong type, a missing or unsupported parameter."""


class RequestTooLarge(ClientError):
    """The body is over the configured cap (chunked bodies included)."""

    status_code = 413
    code = "request_too_large"


class RequestTimeout(ClientError):
    """The client paused too long while sending its body."""

    status_code = 408
    code = "request_timeout"


class UnsupportedMediaType(ClientError):
    """A JSON endpoint got a body that is not declared ``application/json``."""

    status_code = 415
    code = "unsupported_media_type"


class HeadersTooLarge(ClientError):
    """The request line and headers are over the size or count cap."""

    status_code = 431
    code = "headers_too_large"


class HostNotAllowed(ClientError):
    """The ``Host`` header names a host this server does not serve (a DNS rebinding page)."""

    status_code = 421
    code = "host_not_allowed"


class OriginNotAllowed(ClientError):
    """A browser sent the request from a page of another origin."""

    status_code = 403
    error_type = "permission_error"
    code = "origin_not_allowed"


class ModelNotFound(ClientError):
    """The requested model is not one of the configured aliases."""

    status_code = 404
    code = "model_not_found"


class NotFound(ClientError):
    """No such path."""

    status_code = 404
    code = "not_found"


class ContentFiltered(ClientError):
    """The request contains a word the sensitive-word filter blocks."""

    code = "content_filter"


class InvalidApiKey(ClientError):
    """The API key is missing, malformed or unknown."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class KeyRevoked(InvalidApiKey):
    """The API key was revoked."""

    code = "key_revoked"


class KeyExpired(InvalidApiKey):
    """The API key is past its expiry time."""

    code = "key_expired"


class KeyNameTaken(ClientError):
    """Another key already has this name."""

    status_code = 409
    code = "key_name_taken"


class StorageUnavailable(NobusyError):
    """The database could not be read or written (locked past the busy timeout, disk error),
    or the shared state (Redis) does not answer under ``on_state_failure: refuse``."""

    status_code = 503
    error_type = "service_unavailable"
    code = "storage_unavailable"


class Draining(NobusyError):
    """The process is stopping (SIGTERM): it takes no new request, and cut one still running at
    ``drain_timeout``. Another replica, or this one restarted, answers the retry."""

    status_code = 503
    error_type = "service_unavailable"
    code = "draining"

    def __init__(self, message: str) -> None:
        # A retry after a second reaches another replica behind a load balancer, or a single
        # host restarted by then; `connection: close` moves a keep-alive client off this process.
        super().__init__(message, headers={"retry-after": "1", "connection": "close"})


class RateLimited(ClientError):
    """A key went over one of its limits; the message names it and when it resets."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, param: str | None = None) -> None:
        super().__init__(
            message, param=param, headers={"retry-after": str(max(1, round(retry_after)))}
        )


class QuotaExhausted(ClientError):
    """The key's prepaid token balance is used up."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


class ModelNotAllowed(ClientError):
    """The key may not use this model."""

    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class PermissionDenied(ClientError):
    """The key may see this (a vector store granted to it) but not change it."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class LocalOnlyStore(ClientError):
    """An alias that could send a ``local_only`` vector store's passages to a remote upstream."""

    status_code = 403
    error_type = "permission_error"
    code = "local_only_store"


class QueueFull(ClientError):
    """Every route is at capacity and the wait would be longer than the client's patience."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, eta: float, patience: float, position: int) -> None:
        super().__init__(
            f"All upstreams for this model are at capacity: you would be number {position} in "
            f"the queue, about {eta:.0f}s, more than your patience of {patience:.0f}s. "
            f"Retry after {max(1, math.ceil(eta))}s or raise x-nobusy-max-wait.",
            headers={"retry-after": str(max(1, math.ceil(eta)))},
        )


class QueueTimeout(ClientError):
    """The request waited its whole patience in the queue without a slot."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_timeout"

    def __init__(self, patience: float, position: int) -> None:
        super().__init__(
            f"Waited {patience:.0f}s in the queue (still number {position}) without a free "
            "upstream slot. Retry later.",
            headers={"retry-after": str(max(1, round(patience / 2)))},
        )


class AdminAuthRequired(ClientError):
    """An admin endpoint was called without the admin key."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class UpstreamError(NobusyError):
    """One attempt at one upstream failed; another upstream may succeed."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"
    retryable = True
    attempted = True  # False for the notes of routes skipped without a request
    # What a client is told instead of ``message``, which may quote the HTTP client's own
    # wording with the upstream's address ("Cannot connect to host 10.0.0.7:8001 ...").
    phrase = "failed"

    def __init__(
        self,
        message: str,
        *,
        upstream: str = "",
        retry_after: float | None = None,
        status: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.upstream = upstream
        self.retry_after = retry_after
        self.upstream_status = status

    @property
    def summary(self) -> str:
        """What went wrong, in words safe to show a client: the class's phrase and status."""
        if self.upstream_status is not None and self.upstream_status != 200:
            return f"HTTP {self.upstream_status} ({self.phrase})"
        return self.phrase

    @property
    def public_message(self) -> str:
        return f"Upstream '{self.upstream or '?'}' {self.summary}."


class UpstreamUnreachable(UpstreamError):
    """Connection refused or reset, DNS or TLS failure."""

    phrase = "cannot connect"

    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    """No first token in time, too long a gap between tokens, or a hung response."""

    phrase = "timed out"

    status_code = 504
    code = "upstream_timeout"


class UpstreamOverloaded(UpstreamError):
    """The upstream said it is busy (429, 503, 529), maybe with a Retry-After."""

    phrase = "busy"

    status_code = 503
    code = "upstream_overloaded"


class RetryBudgetSpent(UpstreamError):
    """Not an attempt: failing over from this upstream was refused by its retry budget."""

    phrase = "not retried: retry budget spent"

    attempted = False


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused our credentials (401/403): a configuration problem."""

    phrase = "refused nobusy's credentials"

    code = "upstream_auth_failed"


class UpstreamProtocolError(UpstreamError):
    """Malformed SSE or JSON, an error event inside a 200 stream, or a truncated answer."""

    phrase = "sent a malformed answer"

    code = "upstream_protocol_error"


class UpstreamEjected(UpstreamError):
    """Not tried: the upstream's circuit is open (it failed recently, or asked for a pause)."""

    phrase = "paused after recent failures"

    status_code = 503
    code = "upstream_ejected"
    attempted = False


class UpstreamRejectedRequest(UpstreamError):
    """The upstream says the request itself is invalid: the client must fix it."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    retryable = False

    @property
    def public_message(self) -> str:
        return self.message  # the upstream's own words about the client's request


class AllUpstreamsFailed(NobusyError):
    """Every route of the alias failed; the message names what failed where."""

    status_code = 503
    error_type = "service_unavailable"
    code = "all_upstreams_failed"

    def __init__(self, alias: str, failures: list[UpstreamError]) -> None:
        detail = "; ".join(f"{f.upstream or '?'}: {f.message}" for f in failures) or "no route"
        summary = "; ".join(f"{f.upstream or '?'}: {f.summary}" for f in failures) or "no route"
        # The earliest upstream expected back; one that gave no hint may be back at once.
        retry_afters = [f.retry_after for f in failures if f.retry_after is not None]
        soonest = min(retry_afters) if len(retry_afters) == len(failures) and failures else 1
        headers = {"retry-after": str(max(1, round(soonest)))}
        super().__init__(f"All upstreams for model '{alias}' failed: {detail}", headers=headers)
        self._public = f"All upstreams for model '{alias}' failed: {summary}"
        self.failures = failures

    @property
    def public_message(self) -> str:
        return self._public


class ConfigError(NobusyError):
    """The configuration is invalid; the message names the key and what is wrong."""


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
