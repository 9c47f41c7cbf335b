"""The Redis URL in words without its password, and the start-up check against a real Redis."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nobusy.errors import ConfigError
from nobusy.settings import Settings, load_settings
from nobusy.store.redis_client import check_state, redact, scrub
from tests.conftest import free_port
from tests.redis_server import RedisServer


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@10.0.0.5:6379/2", "redis://:***@10.0.0.5:6379/2"),
        ("rediss://nobusy:s3cret@cache.example:6380", "rediss://nobusy:***@cache.example:6380"),
        ("redis://s3cret@10.0.0.5", "redis://***@10.0.0.5"),
        ("redis://10.0.0.5/0?password=s3cret&db=1", "redis://10.0.0.5/0?password=***&db=1"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert scrub(f"failed for {url}", url) == f"failed for {url.replace('s3cret', '***')}"


def test_state_must_be_a_redis_url_and_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"NOBUSY_STATE": "http://:s3cret@host"})
    assert "state: Value error, must be a redis:// or rediss:// URL" in caught.value.message
    assert "s3cret" not in caught.value.message
    settings = load_settings(env={"NOBUSY_STATE": "redis://:s3cret@host/0"})
    assert "s3cret" not in repr(settings)


def settings_for(url: str, **fields: object) -> Settings:
    return Settings.model_validate({"state": url, **fields})


def test_the_start_up_check(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check_state(settings_for(redis_server.url))  # answers: nothing to say
    dead = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as caught:
        check_state(settings_for(dead, on_state_failure="refuse"))
    assert caught.value.message.startswith("cannot reach Redis at redis://:***@127.0.0.1:")
    assert "hunter2" not in caught.value.message
    with caplog.at_level(logging.WARNING, "nobusy"):
        check_state(settings_for(dead))  # local: a warning, and start
    assert "starting with local key limits" in caplog.text and "hunter2" not in caplog.text
    locked = RedisServer(tmp_path, free_port(), "--requirepass", "the-right-one").start()
    try:
        url = f"redis://:hunter2-password@127.0.0.1:{locked.port}/0"
        with pytest.raises(ConfigError) as caught:
            check_state(settings_for(url))  # a wrong password is not an outage
        assert "refused nobusy's credentials" in caught.value.message
        assert "hunter2" not in caught.value.message
    finally:
        locked.stop()
