"""What the e2e fuzz tests check on the running stack after they attacked it: every process still there (no
crash, no restart), `/health` seeing all of them, and memory bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from common.keys import Keys
from tests.e2e.conftest import StackInfo

T = TypeVar("T")

# Growth of a process's resident memory over one fuzz test that counts as bounded. Generous: a frontend
# that kept every frame it was sent (hundreds of them, some over 1 MiB) would go far past it, allocator
# noise and lazily loaded models do not.
RSS_GROWTH = 160 * 1024 * 1024
# Where the stack's processes write their output (set by the fuzz_stack fixture).
STACK_LOG: Path | None = None


def log_tail(call_id: str | None = None, lines: int = 60) -> str:
    """The end of the stack's output (about `call_id` only, when given), for the message of a failed
    check. PBX_FUZZ_LOG_LEVEL=INFO makes the processes say more."""
    if STACK_LOG is None or not STACK_LOG.exists():
        return ""
    output = STACK_LOG.read_text(errors="replace").splitlines()
    if call_id is not None:
        output = [line for line in output if call_id in line or "Traceback" in line or "Error" in line]
    return "\nstack output:\n" + "\n".join(output[-lines:])


@dataclass(frozen=True)
class Snapshot:
    """The processes of a stack as their heartbeats show them: proc id -> (role, pid, resident bytes)."""

    procs: dict[str, tuple[str, int, int]]

    @classmethod
    def take(cls, info: StackInfo) -> Snapshot:
        procs: dict[str, tuple[str, int, int]] = {}
        for key in info.redis.scan_iter(match=Keys().proc_pattern()):
            raw = info.redis.get(key)
            if raw is None:
                continue
            beat = json.loads(raw)
            proc = str(beat["proc"])
            # Media heartbeats carry their pid; a frontend's id is web-<host>-<pid>-<random>.
            pid = int(beat.get("pid") or proc.rsplit("-", 2)[-2])
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                rss = -1
            procs[proc] = (str(beat["role"]), pid, rss)
        return cls(procs)

    def check_after(self, info: StackInfo) -> None:
        """The same processes, alive, seen by /health, none grown past RSS_GROWTH."""
        later = Snapshot.take(info)
        assert set(later.procs) == set(self.procs), (
            f"processes changed: {self.procs} -> {later.procs}{log_tail()}"
        )
        for proc, (_role, pid, rss) in later.procs.items():
            process = psutil.Process(pid)
            assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, proc
            before = self.procs[proc][2]
            assert rss - before < RSS_GROWTH, f"{proc}: {before >> 20} MiB -> {rss >> 20} MiB"
        health = info.health()
        roles = [role for role, _, _ in self.procs.values()]
        assert health["media_processes"] == roles.count("media") and health["web_processes"] == roles.count(
            "web"
        ), health


class Loop:
    """One event loop for a module's hypothesis examples (hypothesis runs sync functions; each example
    runs its coroutine here, and connections opened in one example serve the next)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
