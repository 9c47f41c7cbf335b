"""What one request cost: its tokens priced for the route that answered, at the moment it
started, in the route's currency and in the reporting currency; and what the same tokens would
have cost on the alias's first-choice route (the price of failover and overflow).

``Pricer.price`` fills a ``UsageRecord``'s cost fields; ``Ledger.close`` calls it just before
the row is written. A route without a configured price costs 0 (the embedded model, a local
server).
"""

from __future__ import annotations

from datetime import UTC, datetime

from nobusy.money.prices import Currency, Price, PricingSettings
from nobusy.settings import Route, Settings
from nobusy.store.usage import UsageRecord

__all__ = ["Pricer", "route_of"]

_OVERFLOW = " (overflow)"


def route_of(label: str) -> Route:
    """The route a usage row's ``upstream`` names (``deepseek/deepseek-chat (overflow)``)."""
    return Route.parse(label.removesuffix(_OVERFLOW))


class Pricer:
    """Prices usage records with the prices and exchange rates of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.pricing: PricingSettings = settings.pricing
        self._prices: dict[str, Price | None] = {
            name: up.price for name, up in settings.upstreams.items()
        }
        self._defaults: dict[str, str | None] = {
            name: getattr(up, "default_model", None) for name, up in settings.upstreams.items()
        }
        self._first: dict[str, Route] = {
            alias: spec.routes[0] for alias, spec in settings.models.items() if spec.routes
        }
        self._routes: dict[str, tuple[Route, ...]] = {
            alias: (*spec.routes, *spec.overflow) for alias, spec in settings.models.items()
        }

    def worst(self, alias: str, prompt: int, completion: int, started: float) -> int:
        """The most ``prompt`` and ``completion`` tokens cost (reporting micro-units) on any
        route ``alias`` may take, failover and overflow included."""
        routes = self._routes.get(alias)
        if routes is None:  # a route asked for by name (UPSTREAM/MODEL)
            routes = (route_of(alias),)
        return max((self.cost(r, started, prompt, 0, completion)[2] for r in routes), default=0)

    def cost(
        self, route: Route, started: float, prompt: int, cached: int, completion: int
    ) -> tuple[int, Currency, int]:
        """Micro-units in the route's currency, the currency, micro-units in the reporting one."""
        price = self._prices.get(route.upstream)
        if price is None:
            return 0, self.pricing.currency, 0
        model = route.model or self._defaults.get(route.upstream)
        moment = datetime.fromtimestamp(started, UTC)
        rates = price.for_model(model).at(moment)
        amount = rates.cost(prompt, cached, completion)
        return amount, price.currency, self.pricing.convert(amount, price.currency)

    def price(self, record: UsageRecord) -> None:
        """Fill ``record``'s cost fields from its tokens, route and start time."""
        record.report_currency = self.pricing.currency
        prompt, completion = record.upstream_tokens()  # an answer from the cache costs 0
        tokens = (prompt, record.cached_tokens if prompt else 0, completion)
        if record.upstream is None:
            record.currency = self.pricing.currency
            return
        route = route_of(record.upstream)
        record.cost_micros, record.currency, record.report_cost_micros = self.cost(
            route, record.started, *tokens
        )
        first = self._first.get(record.alias)
        if first is not None:
            record.first_choice = str(first)
            same = first.upstream == route.upstream and first.model == route.model
            record.first_choice_cost_micros = (
                record.report_cost_micros if same else self.cost(first, record.started, *tokens)[2]
            )
