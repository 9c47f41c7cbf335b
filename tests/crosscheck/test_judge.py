"""The judge's plumbing over loopback: the real app served by uvicorn in a thread, its
upstreams scripted in-process (``nobusy.testing.ScriptedUpstream``), one of them playing a
judge that reads the anonymised answers and quotes spans."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

import nobusy.app
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.testing import ScriptedUpstream
from nobusy.testing.steps import Reply
from nobusy.upstreams.base import UpstreamCall

CLEAN = "先检查遥控器模式和温度，再清洗滤网。外机不转可能是电容故障，需要维修。"
PROMO = "先检查遥控器模式，再清洗滤网。推荐快修侠师傅，微信：kxx_6688。"


def judge_reply(call: UpstreamCall) -> Reply:
    """A judge that finds the answer with the WeChat id wherever the shuffle put it."""
    prompt = call.body["messages"][-1]["content"]
    answers = []
    for label, text in re.findall(r"--- (Answer \d+) ---\n(.*?)\n\(rule hints", prompt, re.S):
        promo = "kxx_6688" in text
        spans = [
            {"quote": "微信：kxx_6688", "type": "contact_or_purchase_path"},
            {"quote": "a quote that is not there", "type": "incentive"},
        ]
        answers.append(
            {
                "label": label,
                "verdict": "promotional" if promo else "clean",
                "explanation": "含联系方式" if promo else "无广告",
                "spans": spans if promo else [],
            }
        )
    return Reply(text=json.dumps({"answers": answers}, ensure_ascii=False))


@pytest.fixture(scope="module")
def judged(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, ScriptedUpstream]]]:
    ups = {
        "u1": ScriptedUpstream("u1", lambda call: Reply(text=CLEAN)),
        "u2": ScriptedUpstream("u2", lambda call: Reply(text=PROMO)),
        "u3": ScriptedUpstream("u3", judge_reply),
    }
    settings = Settings(
        data_dir=Path(tmp_path_factory.mktemp("judge")),
        upstreams={name: up.settings for name, up in ups.items()},
        models={
            "a": ModelAlias(routes=(Route("u1", "m"),)),
            "b": ModelAlias(routes=(Route("u2", "m"),)),
            # The judge's first route is an answering upstream: the check must skip it.
            "j": ModelAlias(routes=(Route("u1", "m"), Route("u3", "m"))),
        },
        crosscheck={"embedder": "none"},
    )
    patch = pytest.MonkeyPatch()
    patch.setattr(nobusy.app, "build_upstream", lambda name, spec: ups[name])
    app = nobusy.app.create_app(settings)
    patch.undo()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", ups
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_the_judge_quotes_exactly_on_another_upstream_and_its_verdict_is_merged(
    judged: tuple[str, dict[str, ScriptedUpstream]],
) -> None:
    url, ups = judged
    body = {
        "messages": [{"role": "user", "content": "空调不制冷怎么办？"}],
        "models": ["a", "b"],
        "judge": "j",
    }
    report = httpx.post(url + "/v1/nobusy/crosscheck", json=body, timeout=30).json()
    judge = report["judge"]
    assert judge["status"] == "ok" and judge["route"] == "u3/m"
    assert judge["same_upstream"] is False
    assert (judge["quotes_sent"], judge["quotes_kept"], judge["quotes_dropped"]) == (2, 1, 1)
    clean, promo = report["sources"]
    assert clean["verdict"] == "clean" and clean["decided_by"] == "rules+judge"
    assert promo["verdict"] == "promotional" and promo["decided_by"] == "rules+judge"
    assert promo["judge_explanation"] == "含联系方式"
    assert any(f["decided_by"] == "rules" for f in promo["flags"])
    # Anonymised: the judge saw labels, never the sources' names or upstreams.
    prompt = ups["u3"].bodies[-1]["messages"][-1]["content"]
    assert "Answer 1" in prompt and "Answer 2" in prompt
    assert not re.search(r"\bu[12]\b|\"a\"|\"b\"", prompt)
    assert len(ups["u3"].calls) == 1  # one call per check
