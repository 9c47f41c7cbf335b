"""What a request needs of a route (images, text completions, fill-in-the-middle), and the
routes of its alias that have it.

An upstream says what it takes in its settings (``vision``, ``completions``, ``fim``); a
weighted route (``{route: UPSTREAM/MODEL, vision: false}``) may say otherwise for its model.
A request goes only to the routes that can take it, so an image is never sent to a text-only
model and a completions request never to a chat-only API (whose refusal would be a 400 the
walker cannot fail over from). When no route of the alias can take it, the request is refused
before it is admitted, with a 400 that names what it needs and the setting that offers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nobusy.errors import InvalidRequest
from nobusy.settings import ModelAlias, Route
from nobusy.upstreams.base import Upstream, is_text_completion

if TYPE_CHECKING:
    from nobusy.routing.router import Router

__all__ = ["CAPABILITIES", "can", "fitting", "needs"]

CAPABILITIES = ("vision", "completions", "fim")
_WHAT = {
    "vision": ("images", "vision: true", "messages"),
    "completions": ("text completions (/v1/completions)", "completions: true", "model"),
    "fim": ("fill-in-the-middle (a `suffix`)", "fim: true", "suffix"),
}
# Content parts that carry an image: chat's, and Anthropic's and Responses' before translation.
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def needs(body: dict[str, Any]) -> tuple[str, ...]:
    """The capabilities an internal request needs of its route (most requests: none)."""
    if is_text_completion(body):
        return ("completions", "fim") if body.get("suffix") else ("completions",)
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    return ("vision",)
    return ()


def can(upstreams: Mapping[str, Upstream], route: Route, capability: str) -> bool:
    """Whether ``route`` offers ``capability``: the route's own say, else its upstream's."""
    own: bool | None = getattr(route, capability)
    if own is not None:
        return own
    upstream = upstreams.get(route.upstream)
    return bool(upstream is not None and getattr(upstream.settings, capability, False))


def fitting(router: Router, alias: str, body: dict[str, Any]) -> ModelAlias:
    """The alias's routes that can take ``body`` (the alias itself when every route can), or
    InvalidRequest naming what no route offers."""
    spec = router.alias(alias)
    wanted = needs(body)
    if not wanted:
        return spec
    upstreams = router.upstreams

    def fits(route: Route) -> bool:
        return all(can(upstreams, route, need) for need in wanted)

    routes = tuple(r for r in spec.routes if fits(r))
    overflow = tuple(r for r in spec.overflow if fits(r))
    if not routes and not overflow:
        every = (*spec.routes, *spec.overflow)
        offered = (n for n in wanted if not any(can(upstreams, r, n) for r in every))
        missing = next(offered, wanted[-1])  # else: no route has them all at once
        what, setting, param = _WHAT[missing]
        raise InvalidRequest(
            f"No route of model '{alias}' takes {what}: send it to a model whose upstream "
            f"has `{setting}` in nobusy's configuration.",
            param=param,
        )
    if len(routes) == len(spec.routes) and len(overflow) == len(spec.overflow):
        return spec
    return spec.model_copy(update={"routes": routes, "overflow": overflow})
