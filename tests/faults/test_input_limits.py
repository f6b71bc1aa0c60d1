"""Size limits on what enters the store: sane defaults, configurable, a clear error past them.

Defaults: payloads and outputs 3 MB (Trigger.dev's), metadata 256 KB, token data 3 MB, keys 512
characters. `configure(limits={...})` changes them; nothing is recorded for a refused trigger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _helpers import rows

import nbtasks
from nbtasks import ConfigurationError, Engine, PayloadSerializationError

MB = 1024 * 1024


def test_defaults() -> None:
    from nbtasks._payload import LIMITS

    assert (LIMITS.payload_bytes, LIMITS.output_bytes) == (3 * MB, 3 * MB)
    assert LIMITS.metadata_bytes == 262_144 and LIMITS.key_chars == 512


def test_payload_over_the_default_limit_is_refused(engine: Engine, echo: Any,
                                                   db_path: Path) -> None:
    before = rows(engine, db_path)
    big = {"blob": "x" * (3 * MB)}
    with pytest.raises(PayloadSerializationError) as info:
        echo.trigger(big)
    assert str(info.value) == (
        "payload is 3145739 bytes of JSON, over the 3145728-byte limit "
        "(configure(limits={'payload_bytes': ...}) changes it)")
    with pytest.raises(PayloadSerializationError, match=r"items\[1\] is 3145739 bytes"):
        echo.batch_trigger([1, big])
    assert rows(engine, db_path) == before
    # Multi-byte text is measured in UTF-8 bytes, not characters.
    with pytest.raises(PayloadSerializationError, match="over the 3145728-byte limit"):
        echo.trigger("é" * (MB + MB // 2 + 10))
    assert echo.trigger("x" * (3 * MB - 2)).wait(timeout=30).ok  # just fits (with its quotes)


def test_limits_are_configurable(engine: Engine, echo: Any, db_path: Path) -> None:
    nbtasks.configure(limits={"payload_bytes": 1000})
    with pytest.raises(PayloadSerializationError, match="1002 bytes of JSON, over the 1000-byte"):
        echo.trigger("y" * 1000)
    engine.configure(limits={"payload_bytes": 2000, "key_chars": 8})
    assert echo.trigger("y" * 1000).wait(timeout=10).ok
    with pytest.raises(ConfigurationError, match=r"concurrency_key: 'user-1234'.*8-character"):
        echo.trigger(1, concurrency_key="user-1234")
    assert rows(engine, db_path)["runs"] == 1


@pytest.mark.parametrize(("limits", "shown"), [
    ({"payload": 5}, "unknown limit 'payload'"),
    ({"payload_bytes": 0}, "payload_bytes=0"),
    ({"payload_bytes": True}, "payload_bytes=True"),
    ({"payload_bytes": "1MB"}, "payload_bytes='1MB'"),
    ({"payload_bytes": 2**40}, "payload_bytes=1099511627776"),
    ("big", "expected a dict"),
])
def test_bad_limits_are_refused_and_change_nothing(limits: Any, shown: str) -> None:
    with pytest.raises(ConfigurationError, match="configure: limits") as info:
        nbtasks.configure(limits=limits)
    assert shown in str(info.value)
    with pytest.raises(ConfigurationError, match="configure: limits"):
        nbtasks.configure(limits={"output_bytes": 5, **(limits if isinstance(limits, dict)
                                                          else {"x": 1})})
    from nbtasks._payload import LIMITS

    assert LIMITS.output_bytes == 3 * MB  # all or nothing


def test_output_over_the_limit_fails_the_attempt(engine: Engine) -> None:
    nbtasks.configure(limits={"output_bytes": 100})

    @engine.task(id="big-out", retry=None)
    async def big(payload: Any, ctx: Any) -> Any:
        return ["z" * 200]

    result = big.trigger(None).wait(timeout=10)
    assert not result.ok
    assert type(result.error).__name__ == "OutputSerializationError"
    assert "output is 204 bytes of JSON, over the 100-byte limit" in str(result.error)


@pytest.mark.parametrize(("options", "shown"), [
    ({"concurrency_key": "k" * (10 * MB)}, "concurrency_key: 'kkkk"),
    ({"concurrency_key": "k" * 513}, "513 characters, over the 512-character limit"),
    ({"idempotency_key": "i" * 513}, "idempotency_key: 'iiii"),
    ({"idempotency_key": ["a", "i" * 600]}, "600 characters"),
    ({"metadata": {"blob": "m" * 262_144}}, "metadata is 262155 bytes of JSON, over the 262144"),
    ({"tags": ["t" * 129]}, "over 128 chars"),
])
def test_keys_tags_and_metadata_have_limits(engine: Engine, echo: Any, db_path: Path,
                                            options: dict[str, Any], shown: str) -> None:
    before = rows(engine, db_path)
    with pytest.raises(ConfigurationError) as info:
        echo.trigger(1, **options)
    assert shown in str(info.value)
    assert len(str(info.value)) < 400  # a 10 MB key is not echoed back
    with pytest.raises(ConfigurationError):
        asyncio.run(echo.trigger_and_wait(1, **options))
    assert rows(engine, db_path) == before


def test_token_data_and_keys_have_limits(engine: Engine, db_path: Path) -> None:
    nbtasks.configure(limits={"token_data_bytes": 50})
    token = engine.wait.create_token(timeout="1h")
    with pytest.raises(PayloadSerializationError,
                       match="data is 62 bytes of JSON, over the 50-byte limit"):
        engine.wait.complete_token(token, {"answer": "a" * 49})
    with pytest.raises(ConfigurationError, match=r"idempotency_key: .*over the 512-character"):
        engine.wait.create_token(idempotency_key="w" * 1000)
    assert rows(engine, db_path)["waitpoints"] == 1
    assert engine.wait.list_tokens()[0]["status"] == "WAITING"
    assert engine.wait.complete_token(token, {"answer": 42})


def test_an_int_payload_is_spelled_and_limited_as_any_other(engine: Engine, echo: Any,
                                                            db_path: Path) -> None:
    """Ints skip the JSON encoder's set-up: the text is the encoder's own, bools stay
    `true`/`false`, and an int too long for the limit or for text is refused naming it."""
    import json

    from nbtasks._payload import dumps

    for value in (0, -7, 2**63, -(10**40), True, False, 1.0):
        assert dumps(value, what="payload") == json.dumps(value)
    before = rows(engine, db_path)
    with pytest.raises(PayloadSerializationError, match=r"items\[1\] cannot be stored as JSON"):
        echo.batch_trigger([1, 10**5000])
    nbtasks.configure(limits={"payload_bytes": 10})
    try:
        with pytest.raises(PayloadSerializationError, match="payload is 11 bytes of JSON"):
            echo.trigger(10**10)
        with pytest.raises(PayloadSerializationError, match=r"items\[1\] is 11 bytes of JSON"):
            echo.batch_trigger([1, 10**10])
    finally:
        nbtasks.configure(limits={"payload_bytes": 3 * MB})
    assert rows(engine, db_path) == before
    assert [r.output for r in echo.batch_trigger([10**20, -1]).wait(timeout=10)] == [10**20, -1]
