"""The recorder quota: how much RECORDER_PATH holds, against RECORDER_QUOTA_MB.

The directory is walked every few seconds on a thread of its own (never per call, never on the event loop);
between walks the figure grows by what this process wrote (recordings, dumps) and by a reservation for each
recording it started, so a burst of new calls cannot all slip in under a stale figure. Other processes'
writes since the last walk are not seen: the bound can be passed by what every recording in progress writes
in that time (64 kB/s each), which is why a recording already running is never cut off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor

log = logging.getLogger("pbx.worker.quota")

# Bytes a second of a recording (stereo 16-bit 16 kHz).
RECORDING_RATE = 64_000
# Seconds between walks at least; a walk that takes long spaces them out to ten times its duration, so a
# huge directory costs at most a tenth of the walking thread.
WALK_EVERY = 5.0
WALK_SHARE = 10.0


def disk_usage(root: str) -> int:
    """Bytes in the files under `root` (symbolic links not followed); 0 if it does not exist. Blocking."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


class RecorderQuota:
    """Admits new recordings (and keeps dumps going) while RECORDER_PATH holds less than `limit` bytes
    (0: always). `run()` is the walking task; its owner cancels it."""

    def __init__(self, root: str, limit: int, walker: Executor, every: float = WALK_EVERY) -> None:
        self.root = root
        self.limit = limit
        self.every = every
        self._walker = walker
        self._measured = 0
        self._since = 0  # written or reserved by this process since the walk began
        self._ready = asyncio.Event()

    @property
    def used(self) -> int:
        """The estimate: the last walk's figure plus this process's writes and reservations since."""
        return self._measured + self._since

    def exhausted(self) -> bool:
        return self.limit > 0 and self.used >= self.limit

    async def admit(self) -> bool:
        """Whether a new recording may start; if so, its first seconds are reserved."""
        if self.limit <= 0:
            return True
        await self._ready.wait()
        if self.exhausted():
            return False
        self._since += int(RECORDING_RATE * self.every)
        return True

    def charge(self, nbytes: int) -> None:
        """`nbytes` were written under the root."""
        self._since += nbytes

    async def walk(self) -> float:
        """Measure the directory once; the seconds the walk took."""
        began = time.monotonic()
        counted = self._since
        measured = await asyncio.get_running_loop().run_in_executor(self._walker, disk_usage, self.root)
        # What was written during the walk may be in its figure too: counted twice until the next walk.
        self._measured, self._since = measured, self._since - counted
        self._ready.set()
        return time.monotonic() - began

    async def run(self) -> None:
        if self.limit <= 0:
            return
        while True:
            try:
                took = await self.walk()
            except Exception:
                log.exception("cannot measure %s", self.root)
                self._ready.set()  # without a figure, this process's own writes still count
                took = 0.0
            await asyncio.sleep(max(self.every, WALK_SHARE * took))
