"""The retry pause: bounded, growing while failures go on, back to the base after a success, spread out."""

from __future__ import annotations

import random
import statistics

import pytest

from common.backoff import Backoff


def highest(a: float, b: float) -> float:
    return b


def lowest(a: float, b: float) -> float:
    return a


def test_pauses_grow_to_the_cap_and_stay_there() -> None:
    backoff = Backoff(0.05, 2.0, uniform=highest)
    pauses = [backoff.next() for _ in range(8)]
    assert pauses[:4] == pytest.approx([0.15, 0.45, 1.35, 2.0])
    assert pauses[4:] == [2.0] * 4


def test_a_pause_is_never_below_the_base() -> None:
    backoff = Backoff(0.1, 2.0, uniform=lowest)
    assert [backoff.next() for _ in range(5)] == [0.1] * 5
    # A source that strays out of its range is clamped, not trusted.
    stray = Backoff(0.1, 2.0, uniform=lambda a, b: b * 10)
    assert stray.next() == 2.0
    stray = Backoff(0.1, 2.0, uniform=lambda a, b: -1.0)
    assert stray.next() == 0.1


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(0.05, 2.0, uniform=highest)
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert backoff.next() == pytest.approx(0.15)


def test_random_pauses_stay_in_bounds_and_spread_out() -> None:
    rng = random.Random(19)
    pauses = []
    for _ in range(200):  # 200 processes that met the same outage
        backoff = Backoff(0.05, 2.0, uniform=rng.uniform)
        pauses.append([backoff.next() for _ in range(10)])
    assert all(0.05 <= p <= 2.0 for run in pauses for p in run)
    # The first retries are not in step: no two processes of 200 pick the same pause ...
    first = [run[0] for run in pauses]
    assert len(set(first)) == len(first)
    assert statistics.pstdev(first) > 0.02
    # ... and they still back off: the later pauses are longer on average.
    assert statistics.mean(run[5] for run in pauses) > 2 * statistics.mean(first)


def test_the_same_source_gives_the_same_pauses() -> None:
    a = Backoff(0.1, 2.0, uniform=random.Random(7).uniform)
    b = Backoff(0.1, 2.0, uniform=random.Random(7).uniform)
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        Backoff(0.0, 2.0)
    with pytest.raises(ValueError):
        Backoff(3.0, 2.0)


async def test_wait_sleeps_the_next_pause() -> None:
    backoff = Backoff(0.001, 0.002, uniform=highest)
    assert await backoff.wait() == pytest.approx(0.002)
