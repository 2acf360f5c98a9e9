"""The event dump: `{id}.events.jsonl`, one line per command and event, written off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common.events import now_ms

if TYPE_CHECKING:
    from worker.quota import RecorderQuota

log = logging.getLogger("pbx.worker.call.dump")


def _append(path: Path, handle: list[IO[bytes]], lines: list[str]) -> int:
    """Append the lines; the bytes written."""
    if not handle:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle.append(path.open("ab"))
    data = "".join(lines).encode("utf-8", "replace")
    handle[0].write(data)
    handle[0].flush()
    return len(data)


def _close(handle: list[IO[bytes]]) -> None:
    if handle:
        handle.pop().close()


class EventDump:
    """Buffers dump lines and appends them in order through a single disk thread.

    The dump lives under RECORDER_PATH and counts against its quota: once the quota is used up it stops for
    good (a client's commands, up to a MiB each, would otherwise grow it without bound), and `on_stop` is
    called once."""

    def __init__(
        self,
        path: Path,
        io: Executor,
        quota: RecorderQuota | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self._io = io
        self._quota = quota
        self._on_stop = on_stop
        self._lines: list[str] = []
        self._handle: list[IO[bytes]] = []
        self.stopped = False

    def add(self, kind: str, content: dict[str, Any]) -> None:
        if self.stopped:
            return
        text = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        line = {"type": kind, "timestamp": now_ms(), "content": text}
        self._lines.append(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> asyncio.Future[int] | None:
        if not self._lines:
            return None
        if self._quota is not None and self._quota.exhausted():
            self.stopped = True
            self._lines.clear()
            if self._on_stop is not None:
                self._on_stop()
            return None
        lines, self._lines = self._lines, []
        fut = asyncio.get_running_loop().run_in_executor(self._io, _append, self.path, self._handle, lines)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[int]) -> None:
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.error("event dump %s: %s", self.path, fut.exception())
        elif self._quota is not None:
            self._quota.charge(fut.result())

    async def close(self) -> None:
        self._on_stop = None  # the call has ended: nobody to tell
        self.flush()
        await asyncio.get_running_loop().run_in_executor(self._io, _close, self._handle)
