"""Limits on what one client may send, and on how many calls the media pool can take right now."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from common.liveness import room
from common.protocol import NAMES, Command, Hangup, Interrupt, Play, Tts
from common.registry import Registry

# How long the media processes' free capacity, read from their heartbeats, is reused: a burst of new calls
# costs one Redis read. A media process rewrites its capacity every 0.5 s under load (common/headroom.py).
CAPACITY_CACHE_TTL = 0.25


class TokenBucket:
    """`rate` tokens a second, at most `burst` of them (default: one second's worth, and at least one)
    saved up; it starts full. A rate of 0 or less means no limit."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        """Spend `n` tokens if there are that many; False (and nothing spent) when there are not."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


# A streamed reply's piece is at most this many characters of frame: an LLM token's `tts` is ~100, a chunk of
# several tokens a few hundred. Longer frames count as commands, so the pieces' budget stays one of text.
MAX_PIECE_FRAME = 1024
# The pieces' bucket holds this many seconds' worth: a whole reply relayed at once (10,000 tokens at the
# default rate, most of an hour of speech) gets through.
PIECES_BURST_SECONDS = 2.0
# How much of a dropped command's text its 429 quotes.
QUOTED_TEXT = 80


class CommandLimit:
    """What one call socket may send in commands, in two budgets.

    The pieces of a streamed reply (a `tts` with `streaming: true` and the `playId` of the stream this socket
    opened, in a frame of at most MAX_PIECE_FRAME characters) come out of `pieces`: an LLM sends one per
    token, hundreds or thousands a second, and each only appends text to a track. Every other command, the
    `tts` that opens a stream included, and frames that are not valid commands, comes out of `commands`.
    So a fast stream never starves an `interrupt`, and a flood of either kind is held to its own rate.

    The piece that closes the open stream (`endOfStream`) is never dropped: otherwise its track could never
    end. It costs nothing, and cannot be abused: each stream it closes had to be opened by a command.
    """

    def __init__(
        self, commands_rate: float, pieces_rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.commands = TokenBucket(commands_rate, clock=clock)
        self.pieces = TokenBucket(pieces_rate, burst=pieces_rate * PIECES_BURST_SECONDS, clock=clock)
        self._open = False  # a stream is open: a streaming `tts` went through and no end since
        self._play_id: str | None = None  # its playId (absent is a playId of its own, as on the track)
        self.piece = False  # the command last let through was a piece of the open stream

    def admit(self, cmd: Command | None, size: int) -> TokenBucket | None:
        """None when `cmd` (None: a frame that is not a valid command) of `size` characters may go on; else
        the bucket it was refused by. A refused command changes nothing."""
        if isinstance(cmd, Tts) and cmd.streaming and self._open and cmd.play_id == self._play_id:
            if cmd.end_of_stream:
                self._open = self.piece = False
                return None
            if size <= MAX_PIECE_FRAME:
                if not self.pieces.take():
                    return self.pieces
                self.piece = True
                return None
        if not self.commands.take():
            return self.commands
        self.piece = False
        if isinstance(cmd, Tts):
            if not (self._open and cmd.play_id == self._play_id):
                # Another playId replaces the track: it opens a stream if it is one.
                self._open = bool(cmd.streaming) and not cmd.end_of_stream
                self._play_id = cmd.play_id
            elif cmd.end_of_stream:
                self._open = False
        elif isinstance(cmd, Interrupt | Play | Hangup):
            self._open = False
        return None


def describe(cmd: Command | None, size: int) -> str:
    """A dropped frame, as its 429 names it: the command, and for a `tts` its playId and text."""
    if cmd is None:
        return f"a text frame of {size} characters"
    name = NAMES[type(cmd)]
    if not isinstance(cmd, Tts):
        return name
    text = json.dumps(cmd.text[:QUOTED_TEXT], ensure_ascii=False)
    if len(cmd.text) > QUOTED_TEXT:
        text += f"... ({len(cmd.text)} characters)"
    play_id = "no playId" if cmd.play_id is None else f"playId {json.dumps(cmd.play_id, ensure_ascii=False)}"
    return f"{name} ({play_id}, text {text}{', endOfStream' if cmd.end_of_stream else ''})"


class MediaCapacity:
    """Whether the live media processes can take another call, from their heartbeats (`calls`,
    `capacity`; a draining process announces capacity 0; one still warming up counts with its `max_calls`,
    and the calls admitted on it wait in the dispatch stream until it is warm: common/liveness.py `room`).

    The figures are read at most every `ttl` seconds; calls admitted since the last read count against
    them, so a burst on this frontend does not all squeeze into the last free slot. Every live frontend
    admits against the same figures, so each takes its share of the room (the room divided by the
    frontends that take calls, rounded up; a draining one takes none): together they do not let in
    several times what is free. The heartbeats are
    stale by up to a heartbeat, so this is a fast refusal, not a guarantee: a call let through may still
    find no room, and then the media process refuses it (or the claim timeout ends it).
    """

    def __init__(
        self, registry: Registry, ttl: float = CAPACITY_CACHE_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._free = 0
        self._admitted = 0
        self._window = 0  # which read the admitted calls count against

    async def free(self) -> int:
        """Calls the media processes can still take, as far as this frontend knows."""
        async with self._lock:
            if self._read_at is None or self._clock() - self._read_at >= self.ttl:
                procs = await self.registry.procs()
                free = sum(room(p) for p in procs)
                # (A draining frontend, SIGTERM to its host's gunicorn in a rolling restart, takes no new
                # call: counting it would leave the others half the room.)
                frontends = max(1, sum(1 for p in procs if p.get("role") == "web" and not p.get("draining")))
                self._free = -(-free // frontends)
                self._read_at = self._clock()
                self._admitted = 0
                self._window += 1
            return self._free - self._admitted

    async def admit(self) -> int | None:
        """Count a new call against the free capacity: None when there is none, else a ticket for
        `release`."""
        if await self.free() <= 0:
            return None
        self._admitted += 1
        return self._window

    def release(self, ticket: int | None) -> None:
        """An admitted call's socket closed. If the figures were not read again since it was admitted, it
        no longer counts against them: short calls in quick succession do not use up the room."""
        if ticket is not None and ticket == self._window and self._admitted > 0:
            self._admitted -= 1
