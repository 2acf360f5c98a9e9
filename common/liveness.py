"""Process liveness that load cannot starve: heartbeats written off the event loop, deaths confirmed twice.

A heartbeat (`pbx:proc:{proc}`, TTL `PBX_HEARTBEAT_TTL`) used to be written by a coroutine on the process's
event loop. A loop saturated by calls then wrote it late, the key expired, and every process's reaper
declared the process dead and hung up all its calls: overload became an outage. Here:

- `Heartbeat` is a daemon thread with its own synchronous Redis connection that writes the heartbeat every
  `HEARTBEAT_EVERY` s whatever the loop is doing. The loop only publishes the fields (calls, capacity, load
  figures) into it. A process that dies (kill -9) or is stopped (SIGSTOP) takes the thread with it, so its
  key still expires after the TTL, and the supervisor or gunicorn's master still deletes it at once.
- The heartbeat carries `loop_at`, the last time the event loop itself showed it was running (`touch`), and
  `beat_at`, when the thread wrote it: a stuck loop is visible to anyone reading the key. A loop silent for
  `PBX_LOOP_STALL_LIMIT` s makes the thread stop writing, so a process whose loop is wedged for good is
  still, in the end, treated as dead.
- `DeathWatch` confirms a death before anyone acts on it: a process counts as dead only once its heartbeat
  was seen missing on two checks at least `PBX_REAP_GRACE` s apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import redis

from common.keys import INBOX_TTL, Keys
from common.redisconn import connect_sync

log = logging.getLogger("pbx.liveness")

# Seconds between heartbeats. With the default TTL of 3 s a heartbeat can be missed twice before it expires.
HEARTBEAT_EVERY = 0.8
# Seconds at least between two writes, however often the loop asks for one at once.
MIN_SPACING = 0.05
# A check whose reads took longer than this (s) saw a Redis in trouble, even if it answered (DeathWatch).
SLOW_READ = 1.0


class Heartbeat:
    """A thread that keeps `pbx:proc:{proc}` alive with the fields the loop last published.

    `on_lost` (called on the loop) when a write found the previous heartbeat gone (a Redis that restarted
    empty, or a stall longer than the TTL); `on_error` (on the loop, with the exception) when a write
    failed; `on_ok` (on the loop) when a write succeeded after a failure. None of them for the first write.
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        proc: str,
        ttl: float,
        *,
        every: float = HEARTBEAT_EVERY,
        stall_limit: float = 0.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.keys = keys
        self.proc = proc
        self.ttl = ttl
        self.every = every
        self.stall_limit = stall_limit
        timeout = max(0.5, min(2.0, ttl / 3))
        self._redis = client or connect_sync(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, socket_keepalive=True
        )
        # Replaced whole by the loop (`publish`), read whole by the thread: no lock needed.
        self._fields: dict[str, Any] = {}
        self.loop_at = time.time()
        self.beats = 0
        self.failures = 0
        self.stalled = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: asyncio.Future[bool] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_error: Callable[[Exception], None] | None = None
        self.on_ok: Callable[[], None] | None = None

    # --- the loop's side ---------------------------------------------------------------------------------

    def publish(self, fields: dict[str, Any], now: bool = False) -> None:
        """The fields of the next heartbeats; with `now`, written at once rather than at the next beat."""
        self._fields = fields
        self.touch()
        if now:
            self._wake.set()

    def touch(self) -> None:
        """The event loop is running (called from it, often)."""
        self.loop_at = time.time()

    async def start(self) -> bool:
        """Start the thread; returns once the first heartbeat was written (True) or failed (False)."""
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        self.touch()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.proc}", daemon=True)
        self._thread.start()
        return await self._first

    async def stop(self) -> None:
        """Stop writing (before the key is deleted on a clean exit: a late write would bring it back)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        self._redis.close()

    # --- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        first = True
        failing = False
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                existed = self.beat()
            except (redis.RedisError, OSError) as exc:
                self.failures += 1
                if not failing:
                    log.warning("heartbeat write failed: %s", exc)
                failing = True
                self._to_loop(self.on_error, exc)
            except Exception:  # never let the thread die: the process would look dead
                log.exception("heartbeat write crashed")
            else:
                if existed is not None:
                    if failing:
                        log.info("heartbeat written again")
                        self._to_loop(self.on_ok)
                    if not existed and not first:
                        self._to_loop(self.on_lost)
                    failing = False
                    self.beats += 1
            if first:
                first = False
                self._settle_first(not failing)
            self._wake.wait(max(0.0, self.every - (time.monotonic() - began)))
            self._wake.clear()
            # Wakes come in bursts (many calls ending at once): one write per MIN_SPACING is enough.
            spare = MIN_SPACING - (time.monotonic() - began)
            if spare > 0 and not self._stop.is_set():
                time.sleep(spare)

    def beat(self) -> bool | None:
        """Write the heartbeat once: whether the previous one was still there; None when the loop has been
        stuck past the stall limit and nothing was written."""
        now = time.time()
        if self.stall_limit > 0 and now - self.loop_at > self.stall_limit:
            if not self.stalled:
                self.stalled = True
                log.error(
                    "event loop stuck for %.0f s: no more heartbeats, this process will be taken for dead",
                    now - self.loop_at,
                )
            return None
        if self.stalled:
            self.stalled = False
            log.warning("event loop running again: heartbeats resume")
        info = dict(self._fields)
        info["loop_at"] = int(self.loop_at * 1000)
        info["beat_at"] = int(now * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self.keys.proc(self.proc))
        pipe.set(self.keys.proc(self.proc), json.dumps(info), px=int(self.ttl * 1000))
        pipe.expire(self.keys.inbox(self.proc), INBOX_TTL)
        existed, _, _ = pipe.execute()
        return bool(existed)

    def _to_loop(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    def _settle_first(self, ok: bool) -> None:
        def settle() -> None:
            if self._first is not None and not self._first.done():
                self._first.set_result(ok)

        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass


def is_warm(heartbeat: dict[str, Any]) -> bool:
    """Whether a media process has its models loaded (worker/warmup.py); heartbeats without the field, from
    before there was a warm-up, count as warm."""
    return bool(heartbeat.get("warm", True))


def room(heartbeat: dict[str, Any]) -> int:
    """Calls a media process can still take, from its heartbeat: its capacity less its calls. A process that
    is still warming up takes none yet but will take up to `max_calls` once warm: calls admitted meanwhile
    wait for it in the dispatch stream (at most the claim timeout) rather than being refused."""
    if heartbeat.get("role") != "media":
        return 0
    if not is_warm(heartbeat):
        return max(0, int(heartbeat.get("max_calls", 0)))
    return max(0, int(heartbeat.get("capacity", 0)) - int(heartbeat.get("calls", 0)))


class DeathWatch:
    """Decides when a process whose heartbeat is missing is dead: when it was seen missing on at least two
    checks, the first at least `grace` seconds ago. One missing read proves nothing (a write that came late,
    a Redis that just came back empty); a process that is really gone stays missing."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic, quiet: float = 0.0) -> None:
        self.grace = grace
        self.quiet = quiet  # how long `forget()` keeps it quiet unless told otherwise
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._quiet_until = float("-inf")

    def started(self) -> float:
        """The time a check's reads begin: pass it to `confirm` as `began`."""
        return self._clock()

    def confirm(
        self, missing: set[str], certain: Collection[str] = (), began: float | None = None
    ) -> set[str]:
        """Record one check (`missing`: the processes found without a heartbeat now; `certain`: those of
        them known dead, a tombstone left by whoever saw the process exit); the dead ones.

        With `began` (`started()` before the check's reads): reads that took longer than SLOW_READ mean
        Redis was in trouble, though it answered in the end (redis-py waits out a cluster's failover by
        retrying, then reads heartbeats that expired meanwhile): as after an error, nothing is confirmed
        for `quiet` seconds."""
        now = self._clock()
        if began is not None and now - began > SLOW_READ:
            self.forget()
        if now < self._quiet_until:
            # Redis failed us lately: a heartbeat missing now may be one its owner could not write either.
            self._seen = {}
            return set(certain) & missing
        seen = {}
        for proc in missing:
            since, checks = self._seen.get(proc, (now, 0))
            seen[proc] = (since, checks + 1)
        self._seen = seen
        confirmed = {p for p, (since, checks) in seen.items() if checks >= 2 and now - since >= self.grace}
        return confirmed | (set(certain) & missing)

    def forget(self, quiet: float | None = None) -> None:
        """Start afresh (Redis was unreachable: nothing seen before proves anything now); for `quiet`
        seconds more (default: the watch's own), a missing heartbeat proves nothing either (on a Redis
        Cluster, a shard that failed over may have let the heartbeats it held expire while nobody could
        write them)."""
        self._seen = {}
        quiet = self.quiet if quiet is None else quiet
        self._quiet_until = max(self._quiet_until, self._clock() + quiet)
