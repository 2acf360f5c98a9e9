"""Run the whole stack on one machine: embedded Redis (unless REDIS_URL is set), the web frontends
(gunicorn) and the media worker pool. It says when every media process is warm (its models loaded); Ctrl-C
stops all of it.

    python -m scripts.stack
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from common.config import Settings
from common.embedded import EmbeddedRedis, port_free

ROOT = Path(__file__).resolve().parent.parent
# Stacks started by this process and not stopped: stopped when it exits, so that a caller that failed between
# `start` and its own clean-up (a test whose set-up raised) leaves no server running behind it.
_RUNNING: set[Stack] = set()


@atexit.register
def _stop_leftovers() -> None:
    for stack in list(_RUNNING):
        stack.stop(signal.SIGTERM, grace=2.0)


class Stack:
    """The processes of one local deployment, started in order and stopped in reverse."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        quiet: bool = False,
        log: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        # Put before each process's command line: `ip netns exec NAME` runs it on another (test) host.
        self.prefix = list(prefix)
        self.quiet = quiet
        self.log = log  # where the processes' output goes instead (benchmarks read it)
        self.redis: EmbeddedRedis | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        args = [*self.prefix, *args]
        if self.log is not None:
            with self.log.open("ab") as log:
                return subprocess.Popen(
                    args, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
                )
        out = subprocess.DEVNULL if self.quiet else None
        return subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out, stderr=out, start_new_session=True)

    def start(self, web: bool = True, worker: bool = True) -> Stack:
        """Start the deployment: Redis (unless REDIS_URL is set), then `worker` and `web` (those asked for:
        a host of a deployment may run only one of them)."""
        if not self.env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(6379 if port_free(6379) else None).start()
            self.env["REDIS_URL"] = self.redis.url
            print(f"embedded redis on {self.redis.url}", file=sys.stderr)
        if worker:
            self.worker = self._popen([sys.executable, "-m", "worker"])
        if web:
            self.web = self._popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "frontend.app:create_app"]
            )
        _RUNNING.add(self)
        return self

    def alive(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.web, self.worker))

    def stop(self, sig: int = signal.SIGINT, grace: float | None = None) -> None:
        """`sig` to the media pool, then to the frontends, each given `grace` seconds (default 20 and 15) to
        exit before its whole process group is killed."""
        _RUNNING.discard(self)
        # Workers first, so calls end with a hangup event delivered through a live frontend.
        for proc, timeout in ((self.worker, 20.0), (self.web, 15.0)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout if grace is None else grace)
            except subprocess.TimeoutExpired:
                # Its own session (start_new_session): the group holds its children too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.redis is not None:
            self.redis.stop()


def warm_media(port: str, timeout: float = 1.0) -> tuple[int, int] | None:
    """(media processes, of which warm) as the stack's `/health` says; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as resp:
            health = json.loads(resp.read())
        return int(health.get("media_processes", 0)), int(health.get("media_warm", 0))
    except (OSError, ValueError):
        return None


def main() -> int:
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    began = time.monotonic()
    stack = Stack().start()
    port = stack.env.get("PORT", "8080")
    expected = Settings.from_env(stack.env).worker_processes
    print(f"pbx starting on http://0.0.0.0:{port}: {expected} media processes warming up", file=sys.stderr)
    ready = False
    code = 0
    while not stopping:
        if not stack.alive():
            print("a process of the stack exited; stopping the rest", file=sys.stderr)
            code = 1
            break
        if not ready:
            # Calls made before this are not refused: they wait for the first warm media process.
            counts = warm_media(port)
            if counts is not None and counts[1] >= expected:
                ready = True
                print(f"pbx ready on http://0.0.0.0:{port} after {time.monotonic() - began:.1f} s: "
                      f"{counts[1]} media processes warm (Ctrl-C stops)", file=sys.stderr)  # fmt: skip
        time.sleep(0.2)
    stack.stop(signal.SIGINT if not stopping or stopping[0] == signal.SIGINT else signal.SIGTERM)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
