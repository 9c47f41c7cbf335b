"""What a local inference server says about its own load, read from its Prometheus ``/metrics``.

``METRICS`` is the one table from each server kind's metric names to nobusy's signals
(running, waiting, KV-cache use, preemptions, prefix-cache hits); where a name changed between
versions, every name is listed, newest first. Versions covered:

- vLLM 0.6 – 0.11 (V0 and V1 engines): ``vllm:gpu_cache_usage_perc`` until it became
  ``vllm:kv_cache_usage_perc`` (0.10.2); ``vllm:gpu_prefix_cache_{queries,hits}_total`` (V1,
  0.8 – 0.10) then ``vllm:prefix_cache_{queries,hits}_total``; V0's ``gpu_prefix_cache_hit_rate``.
- SGLang 0.3 – 0.5: ``sglang:num_running_reqs``, ``num_queue_reqs``, ``token_usage``,
  ``cache_hit_rate``.
- llama.cpp's server (``--metrics``, 2024 – 2025): ``llamacpp:requests_processing``,
  ``requests_deferred``, ``kv_cache_usage_ratio`` (until it was removed in 2025); ``/slots``.

The exposition text is parsed by ``prometheus_client``'s parser. A reading that is nonsense
(negative, NaN or infinite, a share over 1, only another model's series) is refused with
``BadReading`` naming why, so the caller can ignore it and fall back to the learned limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["METRICS", "BadReading", "Reading", "ServerSignals", "parse_metrics"]

METRICS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "preemptions": ("vllm:num_preemptions_total",),
        "cache_queries": (
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ),
        "cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
        "cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),
    },
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_usage": ("sglang:token_usage",),
        "cache_hit_rate": ("sglang:cache_hit_rate",),
    },
    "llamacpp": {
        "running": ("llamacpp:requests_processing",),
        "waiting": ("llamacpp:requests_deferred",),
        "kv_usage": ("llamacpp:kv_cache_usage_ratio",),
    },
}
_SHARES = frozenset({"kv_usage", "cache_hit_rate"})  # 0 … 1
_MODEL_LABELS = ("model_name", "name")  # vLLM and SGLang label by model (old SGLang: name)


class BadReading(ValueError):
    """A metrics page that cannot be believed: the message says why."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll's signals; None where the server does not export it."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    preemptions: float | None = None
    cache_queries: float | None = None
    cache_hits: float | None = None
    cache_hit_rate: float | None = None


@dataclass(slots=True)
class ServerSignals:
    """The last believed reading of one server, corrected by the answers since.

    ``delta`` counts requests nobusy started minus those that ended since the reading, so the
    load estimate moves with each answer between polls."""

    reading: Reading | None = None
    at: float = 0.0  # monotonic time of the reading
    delta: int = 0
    slots: int | None = None  # llama.cpp's /slots
    models: tuple[str, ...] = ()
    problem: str = ""  # why the last poll was ignored, for `nobusy pool`
    stale_after: float = 3.0

    def fresh(self, now: float) -> bool:
        return self.reading is not None and now - self.at <= self.stale_after

    def load(self, now: float) -> float | None:
        """Running + waiting, corrected by answers since; None when not fresh."""
        reading = self.reading
        if reading is None or now - self.at > self.stale_after or reading.running is None:
            return None
        return max(0.0, reading.running + (reading.waiting or 0.0) + self.delta)

    def hit_rate(self) -> float | None:
        reading = self.reading
        if reading is None:
            return None
        if reading.cache_queries:
            return (reading.cache_hits or 0.0) / reading.cache_queries
        return reading.cache_hit_rate


def parse_metrics(kind: str, text: str, models: tuple[str, ...] = ()) -> Reading:
    """The signals in a ``/metrics`` page of a ``kind`` server serving ``models`` (any: empty)."""
    table = METRICS[kind]
    wanted = {name: signal for signal, names in table.items() for name in names}
    found: dict[str, dict[str, float]] = {}  # signal -> metric name -> summed value
    other_models: set[str] = set()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise BadReading(f"not Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            signal = wanted.get(sample.name)
            if signal is None:
                continue
            model = next((sample.labels[k] for k in _MODEL_LABELS if k in sample.labels), None)
            if models and model is not None and model not in models:
                other_models.add(model)
                continue
            value = float(sample.value)
            if math.isnan(value) or math.isinf(value) or value < 0:
                raise BadReading(f"{sample.name} is {value}")
            by_name = found.setdefault(signal, {})
            by_name[sample.name] = by_name.get(sample.name, 0.0) + value
    if not found:
        if other_models:
            raise BadReading(f"metrics are for another model ({', '.join(sorted(other_models))})")
        raise BadReading(f"no {kind} metrics on the page")
    values: dict[str, float] = {}
    for signal, by_name in found.items():
        name = next(n for n in table[signal] if n in by_name)  # the newest name present
        value = by_name[name]
        if signal in _SHARES and value > 1.0 + 1e-6:
            raise BadReading(f"{name} is {value}, a share over 1")
        values[signal] = value
    if "running" not in values:
        raise BadReading(f"no {table['running'][0]} on the page")
    return Reading(**values)
