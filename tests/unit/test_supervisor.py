"""The supervisor's watch over its children's heartbeats (worker/supervisor.py `ChildWatch`)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis

from common.config import Settings
from tests.unit.test_liveness import KEYS, Clock
from worker.supervisor import ChildWatch, Supervisor


class Wall(Clock):
    """The epoch clock heartbeats are stamped with, moved along with the monotonic one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self) -> float:
        return 1_700_000_000.0 + self.clock.now


def beat(wall: float, loop_silent: float = 0.0, warm: bool = True) -> dict[str, Any]:
    return {
        "role": "media",
        "warm": warm,
        "beat_at": int(wall * 1000),
        "loop_at": int((wall - loop_silent) * 1000),
    }


def watch_of(clock: Clock, stall_limit: float = 30.0) -> tuple[ChildWatch, Wall]:
    wall = Wall(clock)
    return ChildWatch(grace=1.0, ttl=3.0, stall_limit=stall_limit, clock=clock, wall=wall), wall


def test_a_child_that_stopped_beating_is_replaced_after_two_checks_a_grace_apart() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    assert watch.check({"a": beat(wall()), "b": beat(wall())}) == {}
    clock.now += 3.5  # stopped: its key expired
    assert watch.check({"a": None, "b": beat(wall())}) == {}
    clock.now += 0.5
    assert watch.check({"a": None, "b": beat(wall())}) == {}, "missing twice, not yet for the grace"
    clock.now += 0.5
    assert watch.check({"a": None, "b": beat(wall())}) == {"a": "stopped beating for 4 s"}


def test_one_missing_read_is_nothing() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    watch.check({"a": beat(wall())})
    for _ in range(10):
        clock.now += 0.5
        assert watch.check({"a": None}) == {}
        clock.now += 0.5
        assert watch.check({"a": beat(wall())}) == {}, "back: the grace starts afresh"


def test_a_child_still_starting_or_slow_to_warm_is_not_killed() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    for _ in range(120):  # a minute without its first heartbeat (imports, Redis not there yet)
        assert watch.check({"a": None}) == {}
        clock.now += 0.5
    for _ in range(600):  # then five minutes warming up
        assert watch.check({"a": beat(wall(), warm=False)}) == {}
        clock.now += 0.5
    clock.now += 3.0
    assert watch.check({"a": None}) == {}
    clock.now += 1.0
    assert watch.check({"a": None}) == {"a": "stopped beating for 4 s"}, "once it beat, it is watched"


def test_a_loop_stale_past_the_stall_limit_counts_as_missing() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    assert watch.check({"a": beat(wall(), loop_silent=29.0)}) == {}
    clock.now += 0.5
    assert watch.check({"a": beat(wall(), loop_silent=30.5)}) == {}
    clock.now += 1.0
    assert watch.check({"a": beat(wall(), loop_silent=31.5)}) == {"a": "event loop stuck for 32 s"}
    off, wall = watch_of(Clock(), stall_limit=0)
    assert off.check({"a": beat(wall(), loop_silent=300)}) == {}
    assert off.check({"a": beat(wall(), loop_silent=302)}) == {}


def test_nothing_is_killed_while_redis_is_down_nor_for_a_ttl_after() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    watch.check({"a": beat(wall())})
    for _ in range(20):  # 10 s of outage
        clock.now += 0.5
        assert watch.check(None, False) == {}
    for _ in range(6):  # back, empty: not counted for one TTL
        clock.now += 0.5
        assert watch.check({"a": None}) == {}
    clock.now += 0.5
    assert watch.check({"a": None}) == {}, "missing since the TTL ended: the grace starts now"
    clock.now += 1.0
    assert watch.check({"a": None}) == {"a": "stopped beating for 14 s"}


def test_nothing_is_killed_while_no_other_process_beats() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    watch.check({"a": beat(wall()), "b": beat(wall())})
    for _ in range(10):  # everyone's key gone at once: Redis lost its data, or the machine was suspended
        clock.now += 0.5
        assert watch.check({"a": None, "b": None}, others=False) == {}
    clock.now += 0.5
    assert watch.check({"a": None, "b": beat(wall())}) == {}
    clock.now += 1.0
    assert watch.check({"a": None, "b": beat(wall())}) == {"a": "stopped beating for 6 s"}


def test_a_replaced_child_is_forgotten() -> None:
    clock = Clock()
    watch, wall = watch_of(clock)
    watch.check({"a": beat(wall())})
    clock.now += 0.5
    watch.check({"a": None})
    clock.now += 2.0
    assert watch.check({"a2": None}) == {}, "the new child has not beaten yet"
    clock.now += 2.0
    assert watch.check({"a2": None}) == {}


def test_the_supervisor_reads_its_childrens_heartbeats_and_the_others() -> None:
    sup = Supervisor(Settings())
    r = fakeredis.FakeRedis()
    sup.redis = r
    r.set(KEYS.proc("media-a"), json.dumps({"warm": False}))
    assert sup._read_beats(["media-a", "media-b"]) == ({"media-a": {"warm": False}, "media-b": None}, False)
    r.set(KEYS.proc("web-x"), "{}")
    r.set(KEYS.proc("media-b"), "not json")
    assert sup._read_beats(["media-a", "media-b"]) == ({"media-a": {"warm": False}, "media-b": {}}, True)
    sup.redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(server_type="redis"))
    sup.redis.connection_pool.connection_kwargs["server"].connected = False
    assert sup._read_beats(["media-a"]) == (None, False), "Redis down"
