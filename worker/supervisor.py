"""The media pool supervisor: starts the media processes, restarts the dead, drains on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import redis

from common import logs
from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.keys import Keys

log = logging.getLogger("pbx.worker.supervisor")

SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# A child that dies sooner than this after starting is restarted only after a pause (crash loop).
MIN_UPTIME = 5.0
# Seconds a dead child's tombstone (`pbx:dead:{proc}`) stays: longer than any reaper takes to see it.
TOMBSTONE_TTL = 60


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
        self.redis = redis.Redis.from_url(settings.redis_url or DEFAULT_LOCAL_URL, socket_timeout=2)
        self.children: dict[int, Child] = {}
        self.stop_signal: int | None = None
        self.restarts = 0

    def _spawn(self, slot: int) -> Child:
        proc_id = f"media-{os.uname().nodename}-{slot}-{uuid.uuid4().hex[:6]}"
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
                self._forget(child)
                if time.monotonic() - child.started < MIN_UPTIME:
                    time.sleep(1.0)
                if self.stop_signal is None:
                    self.restarts += 1
                    self.children[slot] = self._spawn(slot)
        return self._stop()

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
