"""Hardening: the API fuzzed from its own OpenAPI document; nobusy itself never answers 5xx.

Schemathesis generates requests from ``/openapi.json`` (valid and invalid bodies); every
answer must be a 2xx-4xx, or a 502/503/504 naming an upstream (the upstreams' failures,
reported honestly, never nobusy's own), and every error must be in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import GATEWAY_CONFIG, Process, free_port, serve

# Most examples go to chat completions, the body clients send most; the admin API's writes
# (keys, groups, upstreams, aliases: a dozen operations) get 100 each, not 600: the test took
# ~100 s with 600, ~50 s now.
EXAMPLES = {"POST /v1/chat/completions": 600, "POST": 100, "GET": 40}
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # valid requests, then invalid ones


# The client protocols beside chat, embeddings and the cross-check: fuzzed in a test of their
# own, with fewer examples each.
PROTOCOLS = (
    "/v1/messages",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/nobusy/crosscheck",
)
# The knowledge base's Files and Vector Stores API: many operations, each fuzzed more lightly.
KNOWLEDGE = ("/v1/files", "/v1/vector_stores")


@pytest.fixture(scope="module")
def gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A gateway of the fuzz tests' own, configured as the shared one: they call the admin API's
    writes (disable an alias, delete an upstream) with generated names, which must not change
    the gateway every other test uses."""
    tmp = tmp_path_factory.mktemp("fuzzed")
    config = GATEWAY_CONFIG.format(fake=f"{fake_upstream.url}/v1", dead=free_port())
    process = serve(tmp, config, env={"FAKE_KEY": "sk-test-secret-123"})
    yield process
    process.stop()


def test_fuzzed_requests_never_get_a_server_error(gateway: Process) -> None:
    cases = fuzz(gateway, lambda path: not path.startswith((*PROTOCOLS, *KNOWLEDGE)), EXAMPLES)
    assert cases >= 1000, cases


def test_fuzzed_protocol_requests_never_get_a_server_error(gateway: Process) -> None:
    cases = fuzz(gateway, lambda path: path.startswith(PROTOCOLS), {"POST": 50, "GET": 20})
    assert cases >= 300, cases


def test_fuzzed_knowledge_requests_never_get_a_server_error(gateway: Process) -> None:
    cases = fuzz(gateway, lambda path: path.startswith(KNOWLEDGE), {"POST": 40, "GET": 15})
    assert cases >= 300, cases


def fuzz(gateway: Process, chosen: Callable[[str], bool], examples: dict[str, int]) -> int:
    """Fuzz the operations whose path is ``chosen``; the number of cases sent."""
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    cases = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if chosen(op.path)]
    # Invalid requests only where there is something to make invalid: the request body (a
    # bodiless POST has none, and Hypothesis calls such a strategy unsatisfiable).
    runs = [(op, m) for op in operations for m in MODES if len(op.body) > 0 or m == MODES[0]]
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples.get(
                f"{operation.method.upper()} {operation.path}",
                examples.get(operation.method.upper(), 20),
            ),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal cases
            cases += 1
            response = case.call(base_url=gateway.url, timeout=30)
            anthropic = case.path.startswith("/v1/messages")  # Anthropic's error shape there
            if response.status_code >= 500:
                error = response.json()["error"]
                kinds = ("overloaded_error", "api_error", "timeout_error") if anthropic else ()
                assert error["type"] in ("service_unavailable", "upstream_error", *kinds), (
                    response.text
                )
            if response.status_code >= 400 and anthropic:
                assert response.json()["type"] == "error", response.text
                assert set(response.json()["error"]) == {"type", "message"}
            elif response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert "Traceback" not in response.text

        check()
    return cases
