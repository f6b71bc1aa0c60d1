"""Run ids: 9 characters of creation time, then 12 random, in Trigger.dev's friendly alphabet.

The ids are made from lookup tables on the trigger path; these tests hold the tables to the
plain digit-by-digit encoding, so the time prefix keeps sorting ids by age.
"""

from __future__ import annotations

import pytest

from nbtasks import _runstate
from nbtasks._runstate import _ALPHABET, new_id

pytestmark = pytest.mark.timeout(30)


def _digits(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, d = divmod(n, 34)
        out.append(_ALPHABET[d])
    return "".join(reversed(out))


@pytest.mark.parametrize("ms", [0, 1, 33, 34, 1155, 1156, 34**9 - 1, 1_764_000_000_123])
def test_time_prefix_is_the_millisecond_in_base_34(ms: int) -> None:
    _runstate._last_prefix = (-1, "")
    assert _runstate._time_prefix(ms) == _digits(ms, 9)


class _FixedBits:
    def __init__(self, value: int) -> None:
        self.value = value

    def getrandbits(self, k: int) -> int:
        return self.value


@pytest.mark.parametrize("n", [0, 1, 33, 34, 1156, 34**6 + 5, 34**12 - 1, 34**12, 2**96 - 1])
def test_random_part_is_the_draw_in_base_34(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(_runstate, "_rng", _FixedBits(n))
    run_id = new_id("run_")
    assert run_id.startswith("run_") and len(run_id) == 25
    assert run_id[-12:] == _digits(n % 34**12, 12)


def test_ids_are_unique_sorted_by_time_and_in_the_alphabet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [new_id("run_") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(set(i[4:]) <= set(_ALPHABET) for i in ids)
    # A later millisecond sorts after, whatever the random part.
    now = [1_764_000_000_000]
    monkeypatch.setattr(_runstate.time, "time_ns", lambda: now[0] * 1_000_000)
    first = new_id("run_")
    now[0] += 1
    assert new_id("run_")[:13] > first[:13]
