"""``POST /v1/nobusy/crosscheck`` and ``x-nobusy-check: ads`` over loopback: the real server in
front of the shipped fake upstream, driven with httpx and the official openai SDK."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Process, free_port, serve

CONFIG = """
upstreams:
  fake: {{kind: openai, base_url: "{fake}", first_token_timeout: 2}}
  other: {{kind: openai, base_url: "{fake}", first_token_timeout: 2}}
  busy: {{kind: openai, base_url: "{fake}", default_model: http503}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", default_model: ok}}
crosscheck: {{embedder: none, hosts: {{other: [闲鱼]}}}}
models:
  a: [fake/ok]
  b: [other/ok]
  c: ["fake/ok:delay=0.05"]
  down: [busy, dead]
  judge: [fake/ok, other/ok]
  adsy: {{routes: [fake/ok], check_ads: true}}
"""
PROMO = "空调不制冷怎么办？请加微信：kxx_6688 预约，首单立减30元"


@pytest.fixture(scope="module")
def server(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("crosscheck")
    process = serve(tmp, CONFIG.format(fake=f"{fake_upstream.url}/v1", dead=free_port()))
    yield process
    process.stop()


def post(server: Process, body: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/nobusy/crosscheck", json=body, timeout=30)


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"messages": ask("hi"), "models": ["a"]}, "models", "2 to 5"),
        (
            {"messages": ask("hi"), "models": ["a", "b", "c", "a/x", "b/y", "judge"]},
            "models",
            "2 to 5",
        ),
        ({"messages": ask("hi"), "models": ["a", "nosuch"]}, "models", "nosuch"),
        ({"messages": ask("hi"), "models": ["a", "b"], "judge": "a"}, "judge", "one of"),
        ({"messages": ask("hi"), "models": ["a", "b"], "judge": "gone"}, "judge", "gone"),
        ({"messages": ask("   "), "models": ["a", "b"]}, "messages", "empty"),
        (
            {"messages": [{"role": "system", "content": "x"}], "models": ["a", "b"]},
            "messages",
            "empty",
        ),
        ({"messages": ask("hi"), "models": ["a", "a"]}, "models", "twice"),
        ({"messages": ask("hi"), "models": ["a", "b"], "language": "fr"}, "language", "zh"),
        ({"models": ["a", "b"]}, "messages", "messages"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(
    server: Process, body: object, param: str, words: str
) -> None:
    response = post(server, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def test_every_source_answers_and_the_analysis_says_where_they_agree(server: Process) -> None:
    response = post(
        server, {"messages": ask("空调不制冷怎么办？"), "models": ["a", "b", "fake/ok"]}
    )
    assert response.status_code == 200
    report = response.json()
    assert report["mode"] == "cross" and report["language"] == "zh"
    assert [s["model"] for s in report["sources"]] == ["a", "b", "fake/ok"]
    for source in report["sources"]:
        assert source["status"] == "ok" and source["answer"].startswith("Fake answer to")
        assert source["upstream"] in ("fake/ok", "other/ok")
        assert source["usage"]["completion_tokens"] > 0 and source["latency_ms"] > 0
        assert source["verdict"] == "clean"
        assert all(s["support"] > 0.9 for s in source["sentences"])  # the same answer thrice
    assert report["agreement"] == 1.0


def test_promotion_is_flagged_with_exact_spans(server: Process) -> None:
    report = post(server, {"messages": ask(PROMO), "models": ["a", "b"]}).json()
    for source in report["sources"]:
        assert source["verdict"] == "promotional"
        for flag in source["flags"]:
            assert source["answer"][flag["start"] : flag["end"]] == flag["text"]
        assert "contact_or_purchase_path" in {f["type"] for f in source["flags"]}


def test_a_failed_source_keeps_its_slot_and_one_answer_left_runs_the_single_detector(
    server: Process,
) -> None:
    report = post(server, {"messages": ask("What is a VPN?"), "models": ["down", "a"]}).json()
    failed, ok = report["sources"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "all_upstreams_failed"
    assert failed["answer"] is None
    assert ok["status"] == "ok" and ok["verdict"] == "clean"
    assert report["mode"] == "single"
    assert "single-answer detector" in report["note"]


def test_each_source_is_one_usage_row_with_the_crosscheck_marker(server: Process) -> None:
    response = post(server, {"messages": ask("marker test"), "models": ["a", "c"]})
    marker = "crosscheck:" + response.headers["x-nobusy-crosscheck"]
    db = Path(server.log.parent) / "data" / "nobusy.db"
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT alias, notes FROM usage").fetchall()
    marked = sorted(alias for alias, notes in rows if marker in json.loads(notes))
    assert marked == ["a", "c"]


def test_the_streaming_variant_sends_each_answer_then_the_analysis(server: Process) -> None:
    body = {"messages": ask("stream me"), "models": ["a", "c"], "stream": True}
    events: list[tuple[str, str]] = []
    with httpx.stream("POST", server.url + "/v1/nobusy/crosscheck", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, line[6:]))
                kind = ""
    kinds = [k for k, _ in events]
    assert kinds == ["source", "source", "analysis", ""]
    assert events[-1][1] == "[DONE]"
    assert {json.loads(d)["model"] for k, d in events if k == "source"} == {"a", "c"}
    assert json.loads(events[2][1])["mode"] == "cross"


def test_the_judge_is_one_more_call_and_its_verdict_is_merged(server: Process) -> None:
    report = post(server, {"messages": ask(PROMO), "models": ["a", "b"], "judge": "judge"}).json()
    judge = report["judge"]
    # The fake's answer is not the JSON a judge gives: nothing is quoted, the rules stand.
    assert judge["status"] == "ok" and judge["quotes_sent"] == 0
    assert judge["upstream"] in ("fake/ok", "other/ok")
    assert all(s["decided_by"] == "rules" for s in report["sources"])


def test_ads_header_on_a_chat_completion(server: Process) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="a", messages=ask(PROMO), extra_headers={"x-nobusy-check": "ads"}
    )
    assert raw.headers["x-nobusy-ads"].startswith("promotional")
    completion = raw.parse()
    ads = (completion.model_extra or {})["nobusy"]["ads"]
    text = completion.choices[0].message.content or ""
    assert ads["verdict"] == "promotional"
    assert all(text[f["start"] : f["end"]] == f["text"] for f in ads["flags"])
    plain = client.chat.completions.with_raw_response.create(model="a", messages=ask(PROMO))
    assert "x-nobusy-ads" not in plain.headers  # off by default
    assert "nobusy" not in (plain.parse().model_extra or {})
    client.close()


def test_ads_on_a_stream_and_by_alias_setting(server: Process) -> None:
    body = {"model": "adsy", "messages": ask(PROMO), "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = list(r.iter_lines())
    comments = [line for line in lines if line.startswith(": nobusy-ads ")]
    assert len(comments) == 1
    assert json.loads(comments[0][len(": nobusy-ads ") :])["verdict"] == "promotional"
    assert lines.index(comments[0]) < lines.index("data: [DONE]")
    # The SDK ignores the comment and reads the answer as usual.
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="adsy", messages=ask(PROMO), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Fake answer to")
    client.close()


def test_the_cli_shows_answers_side_by_side_and_a_summary(server: Process) -> None:
    from click.testing import CliRunner

    from nobusy.cli.crosscheck import crosscheck

    runner = CliRunner()
    args = [PROMO, "--models", "a,b", "--url", server.url]
    shown = runner.invoke(crosscheck, args, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "promotional" in shown.output and "agreement" in shown.output
    as_json = runner.invoke(crosscheck, [*args, "--json"])
    assert json.loads(as_json.output)["mode"] == "cross"
    refused = runner.invoke(crosscheck, [PROMO, "--models", "a", "--url", server.url])
    assert refused.exit_code != 0 and "2 to 5" in refused.output
