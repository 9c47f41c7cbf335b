"""Hardening: the API fuzzed from its own OpenAPI document; nobusy itself never answers 5xx.

Schemathesis generates requests from ``/openapi.json`` (valid and invalid bodies); every
answer must be a 2xx-4xx, or a 502/503/504 naming an upstream (the upstreams' failures,
reported honestly, never nobusy's own), and every error must be in OpenAI's shape.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import Process

# Most examples go to the one operation with a body; the others have little to vary.
EXAMPLES = {"POST": 600, "GET": 40}
# Operations with a body whose examples are mostly refused at once (unknown model): fewer.
PATH_EXAMPLES = {"/v1/embeddings": 100}
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # valid requests, then invalid ones


def test_fuzzed_requests_never_get_a_server_error(gateway: Process) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    cases = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    # Invalid requests only where there is something to make invalid: the request body.
    runs = [
        (op, m) for op in operations for m in MODES if op.method.upper() == "POST" or m == MODES[0]
    ]
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=PATH_EXAMPLES.get(
                operation.path, EXAMPLES.get(operation.method.upper(), 60)
            ),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal cases
            cases += 1
            response = case.call(base_url=gateway.url, timeout=30)
            if response.status_code >= 500:
                error = response.json()["error"]
                assert error["type"] in ("service_unavailable", "upstream_error"), response.text
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert "Traceback" not in response.text

        check()
    assert cases >= 1000, cases
