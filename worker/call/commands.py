"""One call's command queue: commands run one at a time, in the order they came, with one exception.

The exception is the call's setup (an `invite` that waits for its peer: an outbound SIP call ringing, a
WebRTC answer waiting for ICE gathering). The setup runs beside the queue, so a call that rings for a
minute does not hold up every command behind it. While it runs:

- `hangup` runs at once, ahead of anything held: it ends the call, and with it the setup (the session
  cancels the setup task and CANCELs a ringing INVITE).
- Commands that do not need the answer (`SETUP_FREE`: history, custom, mute/unmute, candidates, interrupt,
  pause/resume) run at once, as they come, unless something is held ahead of them.
- Any other command (`tts`, `play`, `refer`, a second `invite`, ...) is held, and so is everything that
  comes after it (keeping the order), until the setup ends. Then the held commands run in order, exactly as
  they would have run had the queue waited for the answer; if the setup ended the call, they are dropped.

The setup tells the queue it has ended through the queue itself (`_SETUP_ENDED`), so the one task that
runs commands sees the end in order with the commands around it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from common.protocol import (
    AddIceCandidate,
    Candidate,
    Command,
    Custom,
    Hangup,
    History,
    Interrupt,
    Mute,
    Pause,
    Resume,
    Unmute,
)

# What may run while the setup waits for the answer: none of these needs media, a track or the answer.
SETUP_FREE = (History, Custom, Mute, Unmute, Candidate, AddIceCandidate, Interrupt, Pause, Resume)

Parsed = tuple[Command, int | None]  # a command and its sequence number (for the frontend's ack)


class _SetupEnded:
    pass


_SETUP_ENDED = _SetupEnded()

# Commands run back to back at most this long (s) before the loop gets a turn: Queue.get does not yield
# while commands wait, so a burst (a streamed reply's thousands of pieces, ~50 µs each) would otherwise
# hold the loop, and every call's media clock, throughout.
COMMAND_SLICE = 0.005


class CommandQueue:
    """Feeds a call's commands to `execute`, one at a time (see the module's doc for the setup rule).

    `parse` turns a queued body into a command, or None when it reported the body as bad itself.
    `execute` runs one command to its end (reporting its failure and acknowledging it).
    `is_setup` says whether a command is a setup; `spawn` starts the setup's task.
    """

    def __init__(
        self,
        parse: Callable[[dict[str, Any]], Parsed | None],
        execute: Callable[[Command, int | None], Awaitable[None]],
        is_setup: Callable[[Command], bool],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
    ) -> None:
        self._parse = parse
        self._execute = execute
        self._is_setup = is_setup
        self._spawn = spawn
        self._queue: asyncio.Queue[dict[str, Any] | _SetupEnded] = asyncio.Queue()
        self._setup: asyncio.Task[None] | None = None  # until the queue sees _SETUP_ENDED
        self._held: collections.deque[Parsed] = collections.deque()

    def put(self, body: dict[str, Any]) -> None:
        self._queue.put_nowait(body)

    @property
    def held(self) -> int:
        return len(self._held)

    def cancel_setup(self) -> None:
        """The call is ending: stop the setup at the step it is waiting on (not when it runs this itself)."""
        task = self._setup
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def run(self, ending: Callable[[], bool]) -> None:
        held = time.monotonic()
        while not ending():
            if self._queue.empty():
                held = time.monotonic()
            elif time.monotonic() - held > COMMAND_SLICE:
                await asyncio.sleep(0)
                held = time.monotonic()
            item = await self._queue.get()
            if isinstance(item, _SetupEnded):
                self._setup = None
                while self._held and self._setup is None and not ending():
                    await self._start(*self._held.popleft())
                continue
            parsed = self._parse(item)
            if parsed is None:
                continue
            cmd = parsed[0]
            if self._setup is not None and not (
                isinstance(cmd, Hangup) or (not self._held and isinstance(cmd, SETUP_FREE))
            ):
                self._held.append(parsed)
                continue
            await self._start(*parsed)

    async def _start(self, cmd: Command, seq: int | None) -> None:
        if self._is_setup(cmd):
            self._setup = self._spawn(self._run_setup(cmd, seq), "setup")
        else:
            await self._execute(cmd, seq)

    async def _run_setup(self, cmd: Command, seq: int | None) -> None:
        try:
            await self._execute(cmd, seq)
        finally:
            self._queue.put_nowait(_SETUP_ENDED)
