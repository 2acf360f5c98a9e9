"""A process that started a stack and failed before stopping it (a test whose set-up raised) leaves no
server behind when it exits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from common.embedded import EmbeddedRedis, free_port
from tests.e2e.conftest import stack_env

ROOT = Path(__file__).resolve().parents[2]

FAILING_OWNER = """
import json, sys
from scripts.stack import Stack
stack = Stack(json.loads(sys.argv[1]), quiet=True).start()
print(json.dumps([stack.web.pid, stack.worker.pid]), flush=True)
raise RuntimeError("set-up failed after the stack started")
"""


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_stack_left_running_is_stopped_when_its_owner_exits(tmp_path: Path) -> None:
    with EmbeddedRedis() as server:
        env = stack_env(
            tmp_path / "stack", free_port(), server.url, WEB_CONCURRENCY="1", WORKER_PROCESSES="1"
        )
        owner = subprocess.run(
            [sys.executable, "-c", FAILING_OWNER, json.dumps(env)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert owner.returncode == 1 and "set-up failed" in owner.stderr
        pids = json.loads(owner.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 10
        alive = pids
        try:
            while alive and time.monotonic() < deadline:
                alive = [pid for pid in pids if running(pid)]
                time.sleep(0.1)
            assert not alive, f"left running: {[psutil.Process(p).cmdline() for p in alive]}"
        finally:
            for pid in alive:  # a failure here must not leave them to the next tests
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
