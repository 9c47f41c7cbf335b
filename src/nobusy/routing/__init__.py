"""Routing: from a model alias to one seamless answer, whatever its upstreams do.

In the order a request meets them: ``router`` holds the routes of each alias and plans them
(``balancing``: tiers, power of two choices; ``stats``: each upstream's live figures;
``circuit``: ejection; ``budget``: retry and hedge budgets); ``walker`` walks one request's
plan, one ``attempt`` after another, until one speaks (failover, hedging, the busy requeue);
``answer`` relays it and continues a cut answer on the next route (``continuation``,
``continuation_probe``); ``relay`` turns the chunks into what the client asked for. ``checks``
probes upstreams in the background.
"""

from __future__ import annotations

from nobusy.routing.answer import Answer, open_answer
from nobusy.routing.attempt import Attempt
from nobusy.routing.router import Router
from nobusy.routing.walker import Walker

__all__ = ["Answer", "Attempt", "Router", "Walker", "open_answer"]
