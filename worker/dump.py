"""The event dump: `{id}.events.jsonl`, one line per command and event, written off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any

from common.events import now_ms

log = logging.getLogger("pbx.worker.dump")


def _append(path: Path, handle: list[IO[str]], lines: list[str]) -> None:
    if not handle:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle.append(path.open("a", encoding="utf-8"))
    handle[0].write("".join(lines))
    handle[0].flush()


def _close(handle: list[IO[str]]) -> None:
    if handle:
        handle.pop().close()


class EventDump:
    """Buffers dump lines and appends them in order through a single disk thread."""

    def __init__(self, path: Path, io: Executor) -> None:
        self.path = path
        self._io = io
        self._lines: list[str] = []
        self._handle: list[IO[str]] = []

    def add(self, kind: str, content: dict[str, Any]) -> None:
        text = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        line = {"type": kind, "timestamp": now_ms(), "content": text}
        self._lines.append(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> asyncio.Future[None] | None:
        if not self._lines:
            return None
        lines, self._lines = self._lines, []
        fut = asyncio.get_running_loop().run_in_executor(self._io, _append, self.path, self._handle, lines)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("event dump %s: %s", self.path, fut.exception())

    async def close(self) -> None:
        self.flush()
        await asyncio.get_running_loop().run_in_executor(self._io, _close, self._handle)
