"""Liveness that load cannot starve (common/liveness.py) and admission by headroom (common/headroom.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest

from common import headroom
from common.bus import Outbox
from common.headroom import Admission, LoadLimits, LoadSample, LoopMeter
from common.keys import Keys
from common.liveness import SLOW_READ, DeathWatch, Heartbeat
from common.reaper import reap_once
from common.registry import Registry

KEYS = Keys("pbx:")


class Clock:
    """A virtual clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[fakeredis.FakeServer]:
    yield fakeredis.FakeServer()


def beat_of(r: fakeredis.FakeRedis, proc: str) -> dict[str, object] | None:
    raw = r.get(KEYS.proc(proc))
    return json.loads(raw) if raw else None


async def until(check: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def toucher(hb: Heartbeat) -> None:
    """What the load meter does in a process: the loop shows, often, that it runs."""
    while True:
        hb.touch()
        await asyncio.sleep(0.02)


# --- the heartbeat thread ------------------------------------------------------------------------------


async def test_heartbeat_goes_on_while_the_loop_is_blocked(server: fakeredis.FakeServer) -> None:
    r = fakeredis.FakeRedis(server=server)
    hb = Heartbeat("", KEYS, "media-1", ttl=0.5, every=0.1, client=fakeredis.FakeRedis(server=server))
    hb.publish({"role": "media", "calls": 3})
    assert await hb.start() is True
    touching = asyncio.create_task(toucher(hb))
    try:
        time.sleep(1.5)  # noqa: ASYNC251 - the loop is stuck three TTLs long, as a saturated one would be
        beat = beat_of(r, "media-1")
        assert beat is not None, "the heartbeat thread kept the key alive"
        assert beat["calls"] == 3 and beat["role"] == "media"
        # The stall shows: the loop last ran well before the thread last wrote.
        assert int(beat["beat_at"]) - int(beat["loop_at"]) >= 1200  # type: ignore[call-overload]
        await asyncio.sleep(0.3)
        beat = beat_of(r, "media-1")
        assert beat is not None and int(beat["beat_at"]) - int(beat["loop_at"]) < 500  # type: ignore[call-overload]
    finally:
        touching.cancel()
        await hb.stop()
    r.delete(KEYS.proc("media-1"))
    await asyncio.sleep(0.3)
    assert beat_of(r, "media-1") is None, "a stopped heartbeat writes no more"


async def test_heartbeat_publish_now_and_lost_key(server: fakeredis.FakeServer) -> None:
    r = fakeredis.FakeRedis(server=server)
    hb = Heartbeat("", KEYS, "web-1", ttl=5, every=10, client=fakeredis.FakeRedis(server=server))
    lost: list[bool] = []
    hb.on_lost = lambda: lost.append(True)
    hb.publish({"calls": 0})
    await hb.start()
    try:
        assert not lost, "the first write finds no key, and says nothing"
        hb.publish({"calls": 7}, now=True)
        await until(lambda: (beat_of(r, "web-1") or {}).get("calls") == 7, 1.0)
        assert r.ttl(KEYS.inbox("web-1")) == -2 or r.ttl(KEYS.inbox("web-1")) > 0
        r.flushall()  # Redis restarted without its data
        hb.publish({"calls": 8}, now=True)
        await until(lambda: lost, 1.0)
        assert (beat_of(r, "web-1") or {}).get("calls") == 8
    finally:
        await hb.stop()


async def test_heartbeat_errors_reach_the_loop_and_the_thread_survives() -> None:
    class Broken(fakeredis.FakeRedis):
        fail = True

        def pipeline(self, *args: object, **kwargs: object):
            if Broken.fail:
                raise ConnectionError("redis down")
            return super().pipeline(*args, **kwargs)

    server = fakeredis.FakeServer()
    errors: list[Exception] = []
    ok: list[bool] = []
    hb = Heartbeat("", KEYS, "media-2", ttl=1, every=0.05, client=Broken(server=server))
    hb.on_error = errors.append
    hb.on_ok = lambda: ok.append(True)
    assert await hb.start() is False, "the first write failed"
    try:
        await until(lambda: len(errors) >= 2, 1.0)
        Broken.fail = False
        await until(lambda: ok, 1.0)
        assert beat_of(fakeredis.FakeRedis(server=server), "media-2") is not None
    finally:
        await hb.stop()


async def test_a_loop_stuck_past_the_stall_limit_stops_the_heartbeat(server: fakeredis.FakeServer) -> None:
    r = fakeredis.FakeRedis(server=server)
    hb = Heartbeat(
        "", KEYS, "media-3", ttl=0.3, every=0.05, stall_limit=0.4, client=fakeredis.FakeRedis(server=server)
    )
    hb.publish({"calls": 1})
    await hb.start()
    touching = asyncio.create_task(toucher(hb))
    try:
        time.sleep(1.2)  # noqa: ASYNC251 - stuck for good, as far as the thread can tell
        assert beat_of(r, "media-3") is None, "no heartbeat past the stall limit: the process looks dead"
        assert hb.stalled
        await until(lambda: beat_of(r, "media-3") is not None, 1.0)  # the loop runs again
    finally:
        touching.cancel()
        await hb.stop()


# --- confirmed deaths ----------------------------------------------------------------------------------


def test_death_watch_needs_two_checks_a_grace_apart() -> None:
    clock = Clock()
    watch = DeathWatch(1.0, clock)
    assert watch.confirm({"a"}) == set()
    clock.now += 0.5
    assert watch.confirm({"a"}) == set(), "missing twice, but not for the grace yet"
    clock.now += 0.5
    assert watch.confirm({"a", "b"}) == {"a"}
    clock.now += 0.5
    assert watch.confirm({"b"}) == set(), "b: one grace not over"
    clock.now += 0.5
    assert watch.confirm(set()) == set(), "b came back: forgotten"
    clock.now += 5
    assert watch.confirm({"b"}) == set(), "missing again: the grace starts afresh"
    assert watch.confirm({"c"}, certain={"c"}) == {"c"}, "a tombstone needs no grace"
    assert watch.confirm(set(), certain={"c"}) == set(), "a tombstone of a live process is nothing"
    clock.now += 2
    assert watch.confirm({"x"}) == set()
    watch.forget()
    clock.now += 2
    assert watch.confirm({"x"}) == set(), "after forget() nothing seen before counts"


def test_death_watch_stays_quiet_after_redis_failed() -> None:
    """A shard that failed over may have let heartbeats expire while nobody could write them: for `quiet`
    seconds after an error, missing heartbeats prove nothing (tombstones still do)."""
    clock = Clock()
    watch = DeathWatch(1.0, clock)
    watch.forget(quiet=3.0)
    for _ in range(5):
        assert watch.confirm({"a"}) == set(), "still quiet"
        clock.now += 0.5
    assert watch.confirm({"t"}, certain={"t"}) == {"t"}, "a tombstone counts even while quiet"
    clock.now += 0.6  # quiet over: the grace starts now
    assert watch.confirm({"a"}) == set()
    clock.now += 1.0
    assert watch.confirm({"a"}) == {"a"}
    watch.forget(quiet=3.0)
    watch.forget(quiet=1.0)
    clock.now += 2.0
    assert watch.confirm({"a"}) == set(), "a shorter quiet does not cut a longer one"


def test_death_watch_takes_a_slow_read_for_trouble() -> None:
    """redis-py waits out a cluster's failover by retrying: the read answers late, and the heartbeats it
    finds missing may have expired while nobody could write them."""
    clock = Clock()
    watch = DeathWatch(1.0, clock, quiet=3.0)
    assert watch.confirm({"a"}) == set()
    clock.now += 1.0
    began = watch.started()
    clock.now += SLOW_READ + 0.1
    assert watch.confirm({"a"}, began=began) == set(), "seen twice a grace apart, but the read was slow"
    clock.now += 2.0
    assert watch.confirm({"a"}) == set(), "quiet for 3 s after it"
    clock.now += 1.0
    assert watch.confirm({"a"}) == set(), "the grace starts afresh"
    clock.now += 1.0
    began = watch.started()
    clock.now += 0.2
    assert watch.confirm({"a"}, began=began) == {"a"}, "a quick read confirms as before"


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    redis = fakeredis.FakeAsyncRedis()
    yield Registry(redis, KEYS)
    await redis.aclose()


async def test_reaper_waits_for_a_confirmed_death(registry: Registry) -> None:
    clock = Clock()
    watch = DeathWatch(1.0, clock)
    outbox = Outbox(registry.redis, registry.keys)
    await registry.heartbeat("web-1", {"role": "web"}, 60)
    await registry.register_pending("c1", "websocket", "web-1")
    await registry.claim("c1", "media-late")
    assert await reap_once(registry, outbox, 5, watch) == 0, "one missing heartbeat reaps nothing"
    clock.now += 0.6
    assert await reap_once(registry, outbox, 5, watch) == 0
    await registry.heartbeat("media-late", {"role": "media"}, 60)  # it was only late
    clock.now += 0.6
    assert await reap_once(registry, outbox, 5, watch) == 0
    await registry.redis.delete(KEYS.proc("media-late"))  # now it is gone
    clock.now += 0.6
    assert await reap_once(registry, outbox, 5, watch) == 0, "the grace starts again"
    clock.now += 0.6
    assert await reap_once(registry, outbox, 5, watch) == 0
    clock.now += 0.5
    assert await reap_once(registry, outbox, 5, watch) == 1, "missing on passes 1.1 s apart: dead"

    # A process known dead (the supervisor's tombstone) is reaped on the first pass.
    await registry.register_pending("c2", "websocket", "web-1")
    await registry.claim("c2", "media-killed")
    await registry.redis.set(KEYS.dead("media-killed"), 1)
    assert await reap_once(registry, outbox, 5, watch) == 1
    assert await registry.entries() == []


# --- admission by headroom -----------------------------------------------------------------------------


def sample(busy: float = 0.0, lag: float = 0.0, tick: float = 0.0, calls: float = 0.0) -> LoadSample:
    return LoadSample(loop_busy=busy, lag_ms=lag, tick_ms=tick, calls=calls)


LIMITS = LoadLimits(loop_busy=0.75, lag_ms=30.0, tick_ms=10.0, resume=0.8)


def test_admission_hysteresis() -> None:
    a = Admission(LIMITS, max_calls=200)
    assert not a.update(sample(busy=0.3, calls=50)) and a.admitting
    assert a.capacity(50) == 112, "0.4 of its limits with 50 calls: it would be at 0.9 with 112"
    assert a.update(sample(busy=0.76, calls=120)), "over the loop's CPU limit: a change"
    assert not a.admitting and a.claiming, "refuses new calls, still claims what frontends let through"
    assert a.capacity(120) == 120 and a.capacity(125) == 125, "no room: capacity = its calls"
    assert not a.update(sample(busy=0.7, calls=120)) and not a.admitting, "under the limit is not enough"
    assert not a.update(sample(busy=0.61, calls=118)) and not a.admitting, "0.81 of the limit: still over"
    assert not a.update(sample(busy=0.6, calls=110)) and not a.admitting, "one quiet sample is not enough"
    assert not a.update(sample(busy=0.7, calls=110)) and not a.admitting, "the quiet ones must be in a row"
    assert not a.update(sample(busy=0.6, calls=110)) and not a.admitting
    assert a.update(sample(busy=0.5, calls=110)) and a.admitting, "back to 0.8 of the limit, twice in a row"
    # Far over the limit: stops claiming too, until it admits again.
    assert a.update(sample(busy=0.95, calls=150)) and not a.admitting and not a.claiming
    assert not a.update(sample(busy=0.8, calls=150)) and not a.claiming, "still over: no claims"
    assert not a.update(sample(busy=0.5, calls=100)) and not a.claiming
    assert a.update(sample(busy=0.5, calls=100)) and a.admitting and a.claiming


def test_admission_by_each_figure_and_disabled_limits() -> None:
    for s in (sample(tick=10.5), sample(busy=0.8)):
        a = Admission(LIMITS, max_calls=10)
        a.update(s)
        assert not a.admitting, s
    # Lag counts when it lasts: over the limit in 3 of the last 4 samples (a burst of call setups is not).
    a = Admission(LIMITS, max_calls=10)
    for lag in (31.0, 45.0, 2.0, 2.0, 40.0, 2.0, 35.0):
        a.update(sample(lag=lag))
        assert a.admitting, lag
    a.update(sample(lag=33.0))
    assert not a.admitting and a.lasting_lag() == 33.0
    off = Admission(LoadLimits(loop_busy=0, lag_ms=0, tick_ms=0), max_calls=10)
    off.update(sample(busy=5.0, lag=500.0, tick=100.0, calls=10))
    assert off.admitting and off.pressure == 0.0, "0 = not used: only MAX_CALLS limits"
    frontend = Admission(LoadLimits(loop_busy=0.75, lag_ms=15, tick_ms=0))
    for _ in range(3):
        frontend.update(sample(lag=20.0))
    assert not frontend.admitting and frontend.capacity(3) == 0, "a frontend announces no capacity"


def test_capacity_estimate_from_the_cost_of_a_call() -> None:
    a = Admission(LIMITS, max_calls=400)
    a.update(sample(busy=0.03, calls=0))  # idle: the process's own cost
    assert a.capacity(0) == 400
    a.update(sample(busy=0.12, calls=100))  # pressure 0.16: too little to go by
    assert a.capacity(100) == 400
    a.update(sample(busy=0.5, calls=1))  # one call: too few to go by
    assert a.capacity(1) == 400
    a.update(sample(busy=0.45, calls=150))  # pressure 0.6, ~0.56 of it for 150 calls
    limit = a.capacity(150)
    assert 180 <= limit <= 240, limit
    # The estimate is a total, not a room that moves with the calls: calls taken since do not add room.
    assert a.capacity(170) == limit
    a.update(sample(busy=0.66, calls=limit))  # pressure 0.88: just under the target
    assert abs(a.capacity(limit) - limit) <= 5
    a.update(sample(busy=0.45, calls=150))
    assert Admission(LIMITS, max_calls=100).capacity(0) == 100


async def test_loop_meter_sees_a_busy_loop() -> None:
    samples: list[LoadSample] = []
    meter = LoopMeter(samples.append, calls=lambda: 4, window=0.3, probe=0.01)
    task = asyncio.create_task(meter.run())
    try:
        await until(lambda: samples, 2.0)
        quiet = samples[-1]
        # (Unit tests run two at a time on two cores: a quiet loop's wake-ups may be a time slice late.)
        assert quiet.lag_ms < 50 and quiet.loop_busy < 0.5 and quiet.calls == 4

        def hog() -> None:  # 15 ms of every 20 ms on the loop
            end = time.perf_counter() + 0.015
            while time.perf_counter() < end:
                pass
            hogs.append(asyncio.get_running_loop().call_later(0.005, hog))

        hogs: list[asyncio.TimerHandle] = []
        hog()
        n = len(samples)
        await until(lambda: len(samples) >= n + 2, 3.0)
        hogs[-1].cancel()
        busy = samples[-1]
        # (CPU time, not wall time: on shared cores the hog is not always running)
        assert busy.loop_busy > max(0.25, quiet.loop_busy + 0.2) and busy.lag_ms > 3, (quiet, busy)
        a = Admission(LoadLimits(loop_busy=0.2, lag_ms=100, tick_ms=0))
        a.update(busy)
        assert not a.admitting
    finally:
        task.cancel()


async def test_a_meter_with_a_clock_of_its_own_probes_once_a_window_and_takes_the_clocks_lag() -> None:
    """A media process's clock feeds its lateness (`lag`); the meter itself wakes once a window."""
    samples: list[LoadSample] = []
    meter = LoopMeter(samples.append, calls=lambda: 2, window=0.1, probe=0.1)
    task = asyncio.create_task(meter.run())
    try:
        for late in (1.0, 2.0, 40.0, 3.0):
            meter.lag(late)
        await until(lambda: samples, 2.0)
        first = samples[0]
        assert first.lag_max_ms == 40.0, "the fed lags count"
        assert first.calls == 2
        n = len(samples)
        await until(lambda: len(samples) > n, 2.0)
        assert samples[-1].lag_max_ms < 20, "each window starts afresh"
    finally:
        task.cancel()


def test_headroom_defaults_match_settings() -> None:
    from common.config import Settings

    s = Settings.from_env({}, dotenv=None)
    assert LoadLimits.from_settings(s) == LoadLimits()
    assert s.reap_grace == 1.0 and s.heartbeat_ttl == 3.0 and s.loop_stall_limit == 30.0
    assert s.test_tick_burn_us == 0 and s.test_stall_seconds == 0
    assert headroom.HARD_PRESSURE > 1 > headroom.TARGET_PRESSURE > LoadLimits().resume
