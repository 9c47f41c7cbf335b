"""The one table of local servers' metric names: versions covered, and nonsense refused."""

from __future__ import annotations

import pytest

from nobusy.upstreams.server_metrics import BadReading, parse_metrics

VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.25
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 7.0
"""


def test_an_older_vllm_reads_through_its_own_names() -> None:
    reading = parse_metrics("vllm", VLLM_V0, ("m",))
    assert (reading.running, reading.waiting, reading.kv_usage) == (3, 2, 0.5)
    assert (reading.preemptions, reading.cache_hit_rate) == (7, 0.25)


def test_the_newest_name_wins_where_both_are_exported() -> None:
    both = (
        VLLM_V0
        + '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.75\n'
    )
    assert parse_metrics("vllm", both, ("m",)).kv_usage == 0.75


def test_llamacpp_has_no_model_label() -> None:
    text = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 4\n"
    reading = parse_metrics("llamacpp", text, ("whatever",))
    assert (reading.running, reading.waiting) == (1, 4)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('vllm:num_requests_running{model_name="m"} -1', "is -1.0"),
        ('vllm:num_requests_running{model_name="m"} NaN', "is nan"),
        ('vllm:num_requests_running{model_name="other"} 1', r"another model \(other\)"),
        (
            'vllm:num_requests_running{model_name="m"} 1\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 3',
            "a share over 1",
        ),
        ("<html>not found</html>", "not Prometheus text"),
        ("", "no vllm metrics"),
    ],
)
def test_nonsense_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(BadReading, match=why):
        parse_metrics("vllm", text, ("m",))
