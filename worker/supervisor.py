"""The media pool supervisor: starts the media processes, replaces the dead and the stuck, drains on SIGTERM.

A child is replaced when its pid exits, and also when it stops beating: its heartbeat (written by a thread of
its own, common/liveness.py) has been missing, or its event loop silent past `PBX_LOOP_STALL_LIMIT`, on two
checks at least `PBX_REAP_GRACE` apart (`ChildWatch`). Such a process is stopped (SIGSTOP) or wedged for
good; the reapers end its calls either way, but it would go on holding its ports, its memory and its slot.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from common import logs
from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.keys import Keys
from common.liveness import SLOW_READ, DeathWatch
from common.redisconn import connect_sync, mget_sync

log = logging.getLogger("pbx.worker.supervisor")

SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# A child that dies sooner than this after starting is restarted only after a pause (crash loop).
MIN_UPTIME = 5.0
# Seconds a dead child's tombstone (`pbx:dead:{proc}`) stays: longer than any reaper takes to see it.
TOMBSTONE_TTL = 60
# Seconds between two looks at the children's heartbeats.
WATCH_EVERY = 0.5
# Seconds the supervisor's Redis calls may take: a Redis that hangs delays noticing an exit by no more.
REDIS_TIMEOUT = 1.0


class ChildWatch:
    """Decides which of the supervisor's children stopped beating and are to be killed and replaced.

    Rules (each check is one read of the children's heartbeats):

    - a child is watched from its first heartbeat on. Before it, it is still starting (imports, Redis not
      reachable yet): never killed. A child that is warming up (`warm: false`) is watched like any other, and
      never for being slow to warm: its heartbeat comes from a thread whatever the models do, so only a
      stopped process or a loop wedged for good loses it;
    - a heartbeat counts as missing when its key is gone, or when its `loop_at` is older than `stall_limit`
      (the thread stops writing then anyway; 0: not looked at);
    - a watched child is stuck once missing on two checks at least `grace` apart (`DeathWatch`);
    - nothing counts while Redis does not answer (`beats` None), for one `ttl` after it answers again, or
      while no other process's heartbeat is there (Redis came back empty, or the whole machine was
      suspended: everyone's key expired, and everyone writes it again within a beat).
    """

    def __init__(
        self,
        grace: float,
        ttl: float,
        stall_limit: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.stall_limit = stall_limit
        self._clock = clock
        self._wall = wall
        self._deaths = DeathWatch(grace, clock)
        # proc -> wall time (s) of the last heartbeat seen: only these children are watched.
        self._beat_at: dict[str, float] = {}
        self._quiet_until = 0.0

    def check(self, beats: dict[str, dict[str, Any] | None] | None, others: bool = True) -> dict[str, str]:
        """One check: `beats` the heartbeat of each child now (None: missing), or None when Redis did not
        answer; `others` whether any other process's heartbeat is there. Returns the stuck children, each
        with why (for the log)."""
        now, wall = self._clock(), self._wall()
        if beats is None:
            self._deaths.forget()
            self._quiet_until = now + self.ttl
            return {}
        self._beat_at = {p: t for p, t in self._beat_at.items() if p in beats}
        missing: set[str] = set()
        why: dict[str, str] = {}
        for proc, beat in beats.items():
            if beat is not None:
                at = float(beat.get("beat_at", wall * 1000)) / 1000
                self._beat_at[proc] = max(at, self._beat_at.get(proc, 0.0))
                loop_silent = wall - float(beat.get("loop_at", wall * 1000)) / 1000
                if self.stall_limit > 0 and loop_silent > self.stall_limit:
                    missing.add(proc)
                    why[proc] = f"event loop stuck for {loop_silent:.0f} s"
            elif proc in self._beat_at:
                missing.add(proc)
                why[proc] = f"stopped beating for {wall - self._beat_at[proc]:.0f} s"
        if now < self._quiet_until or not others:
            self._deaths.forget()
            return {}
        return {proc: why[proc] for proc in self._deaths.confirm(missing)}


@dataclass
class Child:
    slot: int
    proc_id: str
    popen: subprocess.Popen[bytes]
    started: float


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.redis = connect_sync(
            settings.redis_url or DEFAULT_LOCAL_URL,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self.children: dict[int, Child] = {}
        self.stop_signal: int | None = None
        self.watch = ChildWatch(settings.reap_grace, settings.heartbeat_ttl, settings.loop_stall_limit)

    def _spawn(self, slot: int) -> Child:
        proc_id = f"media-{self.settings.host_name}-{slot}-{uuid.uuid4().hex[:6]}"
        # One thread per numeric library: a media process is one event loop plus a few worker threads of its
        # own, and BLAS/OpenMP thread pools spinning next to it turned ~1 ms matrix products into 100+ ms
        # stalls of the media clock once the cores were busy.
        env = dict(os.environ, **SINGLE_THREADED)
        popen = subprocess.Popen([sys.executable, "-m", "worker.child", proc_id, str(time.time())], env=env)
        log.info("started media process %s (pid %d)", proc_id, popen.pid)
        return Child(slot, proc_id, popen, time.monotonic())

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only record it: the main loop acts.
        if self.stop_signal is None or signum == signal.SIGINT:
            self.stop_signal = signum

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        count = max(1, self.settings.worker_processes)
        for slot in range(count):
            self.children[slot] = self._spawn(slot)
        next_watch = time.monotonic() + WATCH_EVERY
        while self.stop_signal is None:
            time.sleep(0.1)
            for slot, child in list(self.children.items()):
                code = child.popen.poll()
                if code is None:
                    continue
                if self.stop_signal is not None:
                    break  # the signal reached the child first (Ctrl-C goes to the whole process group)
                if code == 0:
                    # It was asked to stop (SIGTERM to one media process: a rolling restart).
                    log.info("media process %s stopped; starting a new one", child.proc_id)
                else:
                    log.error("media process %s exited with %s; restarting", child.proc_id, code)
                self._replace(slot, child)
            if time.monotonic() >= next_watch and self.stop_signal is None:
                next_watch = time.monotonic() + WATCH_EVERY
                self._watch()
        return self._stop()

    def _replace(self, slot: int, child: Child) -> None:
        """A child has exited: its calls are reaped now, and a new one takes its slot."""
        self._forget(child)
        if time.monotonic() - child.started < MIN_UPTIME:
            time.sleep(1.0)
        if self.stop_signal is None:
            self.children[slot] = self._spawn(slot)

    def _watch(self) -> None:
        """Kill and replace the children that stopped beating (`ChildWatch`)."""
        children = {c.proc_id: (slot, c) for slot, c in self.children.items()}
        stuck = self.watch.check(*self._read_beats(list(children)))
        for proc, why in stuck.items():
            slot, child = children[proc]
            if child.popen.poll() is not None:
                continue  # it exited meanwhile: the exit is handled as any other
            log.error("media process %s (pid %d) %s: killed and replaced", proc, child.popen.pid, why)
            # SIGKILL also ends a stopped process (SIGTERM would wait for a SIGCONT).
            child.popen.kill()
            try:
                child.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                log.error("media process %s (pid %d) survived SIGKILL", proc, child.popen.pid)
            self._replace(slot, child)

    def _read_beats(self, procs: list[str]) -> tuple[dict[str, dict[str, Any] | None] | None, bool]:
        """Each child's heartbeat (None: missing), and whether any other process has one; (None, False) when
        Redis does not answer, or took longer than SLOW_READ to (a failover that redis-py waited out: the
        heartbeats may have expired meanwhile)."""
        mine = {self.keys.proc(p).encode() for p in procs}
        began = time.monotonic()
        try:
            raw = mget_sync(self.redis, [self.keys.proc(p) for p in procs]) if procs else []
            keys = self.redis.scan_iter(match=self.keys.proc_pattern(), count=100)
            others = any(k not in mine for k in keys)
        except (redis.RedisError, OSError):
            return None, False
        if time.monotonic() - began > SLOW_READ:
            log.warning("heartbeats read in %.1f s: Redis was in trouble, none is judged now",
                        time.monotonic() - began)  # fmt: skip
            return None, False
        beats: dict[str, dict[str, Any] | None] = {}
        for proc, value in zip(procs, raw, strict=True):
            try:
                beats[proc] = json.loads(value) if value else None
            except ValueError:
                beats[proc] = {}  # there, if unreadable: it beats
        return beats, others

    def _forget(self, child: Child) -> None:
        """Drop a dead child's heartbeat at once and leave a tombstone (it is known dead: no grace), so its
        calls are reaped now rather than at TTL expiry."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.proc(child.proc_id))
            pipe.set(self.keys.dead(child.proc_id), 1, ex=TOMBSTONE_TTL)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not clear heartbeat of %s: %s", child.proc_id, exc)

    def _stop(self) -> int:
        signum = self.stop_signal or signal.SIGTERM
        drain = self.settings.drain_timeout if signum == signal.SIGTERM else 0.0
        log.info("stopping %d media processes (%s)", len(self.children), signal.Signals(signum).name)
        for child in self.children.values():
            if child.popen.poll() is None:
                child.popen.send_signal(signum)
        deadline = time.monotonic() + drain + 10
        for child in self.children.values():
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("media process %s did not stop; killing it", child.proc_id)
                child.popen.kill()
                child.popen.wait()
                self._forget(child)
        return 0


def main() -> int:
    settings = Settings.from_env()
    logs.setup(settings.log_level, "worker")
    return Supervisor(settings).run()
