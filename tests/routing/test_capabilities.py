"""What a request needs of a route, and the routes that have it: the pure policy, in-process."""

from __future__ import annotations

from typing import Any

import pytest

from nobusy.errors import InvalidRequest
from nobusy.metrics import Metrics
from nobusy.routing.capabilities import fitting, needs
from nobusy.routing.router import Router
from nobusy.settings import ModelAlias, Route, Settings
from nobusy.testing import ScriptedUpstream

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


def chat(*parts: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}]}


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, ()),
        (chat({"type": "text", "text": "hi"}), ()),
        (chat({"type": "text", "text": "hi"}, IMAGE), ("vision",)),
        ({"model": "m", "prompt": "def f("}, ("completions",)),
        ({"model": "m", "prompt": "def f(", "suffix": "return 1"}, ("completions", "fim")),
        ({"model": "m", "prompt": "def f(", "suffix": ""}, ("completions",)),
    ],
)
def test_needs(body: dict[str, Any], wanted: tuple[str, ...]) -> None:
    assert needs(body) == wanted


def router(routes: list[Route], overflow: list[Route] | None = None) -> Router:
    upstreams = {
        "text": ScriptedUpstream("text", []),
        "seeing": ScriptedUpstream("seeing", []),
        "completing": ScriptedUpstream("completing", []),
    }
    upstreams["text"].settings = upstreams["text"].settings.model_copy(update={"vision": False})
    upstreams["completing"].settings = upstreams["completing"].settings.model_copy(
        update={"completions": True}
    )
    settings = Settings(
        upstreams={name: u.settings for name, u in upstreams.items()},
        models={"m": ModelAlias(routes=tuple(routes), overflow=tuple(overflow or ()))},
    )
    return Router(settings, upstreams, Metrics())


def test_every_route_fits_a_plain_request_and_the_alias_is_kept() -> None:
    r = router([Route("text"), Route("seeing")])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert fitting(r, "m", body) is r.alias("m")


def test_an_image_skips_text_only_routes_and_a_route_may_say_otherwise() -> None:
    r = router([Route("text"), Route("seeing"), Route("seeing", "blind", vision=False)])
    assert fitting(r, "m", chat(IMAGE)).routes == (Route("seeing"),)
    r = router([Route("text", vision=True)])
    assert fitting(r, "m", chat(IMAGE)).routes == (Route("text", vision=True),)


def test_overflow_routes_are_filtered_too() -> None:
    r = router([Route("text")], overflow=[Route("seeing")])
    spec = fitting(r, "m", chat(IMAGE))
    assert spec.routes == () and spec.overflow == (Route("seeing"),)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (chat(IMAGE), "messages", "takes images"),
        ({"model": "m", "prompt": "x"}, "model", "text completions"),
        ({"model": "m", "prompt": "x", "suffix": "y"}, "suffix", "fill-in-the-middle"),
    ],
)
def test_no_route_fits_names_why(body: dict[str, Any], param: str, says: str) -> None:
    r = router([Route("text")]) if "messages" in body else router([Route("seeing")])
    if "suffix" in body:
        r = router([Route("completing")])
    with pytest.raises(InvalidRequest) as caught:
        fitting(r, "m", body)
    assert caught.value.param == param
    assert says in caught.value.message and "true" in caught.value.message
