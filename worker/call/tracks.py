"""The server-side track of one call: what plays to the caller, and the rules around it.

One producer plays at a time: a file (`play`, a ringtone, music on hold), a TTS run (worker/call/speaking.py
fills it), the far leg of a transfer (a bridge), or the mediaPass bot's audio. Starting one replaces the
one playing. The rules (RustPBX's `play`/`tts`, docs/protocol.md):

- Each track opens with `trackStart` (trackId `server-side-track`, or the call's `serverSideTrack`; its
  playId) and closes with exactly one `trackEnd` (timestamp, duration in ms since its start, ssrc, playId);
  a replaced track ends before the new one starts. An interrupted TTS track reports what was heard
  (`interruption`) just before its `trackEnd`.
- `interrupt` ends the track at once; `graceful` lets a TTS track finish the sentence it is speaking.
- `pause` holds the position (no frames while paused), `resume` goes on from it; `mute` plays silence in the
  track's place, the track going on underneath.
- Only a track that played out (not one interrupted or replaced, nor a graceful interrupt) applies its
  `autoHangup` (the call ends, reason `autohangup`, initiator `system`) or else its `waitInputTimeout`: if
  nothing comes from the caller (speech, DTMF) and no new track starts within that many ms of `trackEnd`,
  a `silence` event says so.

Time comes from `now` (ms) and the media clock's `tick`, so the rules run on a virtual clock in tests. The
call is reached only through the callbacks given: no session, no process.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import events
from common.events import SERVER_SIDE_TRACK
from common.redact import redact_url
from worker.bot.player import BotPlayer
from worker.media.audiofile import AudioFileError
from worker.media.cache import FetchError
from worker.media.player import SILENT_FRAME, BridgePlayer, FilePlayer
from worker.media.tts_player import TtsPlayer
from worker.paths import MediaNotFound
from worker.urlguard import UrlRefused

log = logging.getLogger("pbx.worker.call.tracks")

Player = FilePlayer | TtsPlayer | BridgePlayer | BotPlayer


@dataclass(slots=True)
class ServerTrack:
    """What is playing on the server-side track now."""

    play_id: str | None
    source: str
    started_ms: int
    auto_hangup: bool = False
    wait_input_timeout: int = 0
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    player: Player | None = None
    loader: asyncio.Task[None] | None = None
    paused: bool = False  # kept for a player still loading: a pause right after `play` is not lost
    tts: object = None  # the TtsRun filling a TTS track (worker/call/speaking.py)
    # The command field the file came from, named when it cannot be played.
    source_field: str = "play.url"
    offset_ms: int = 0  # where in the file it starts (`play.offsetMs`)


class ServerSide:
    """The server-side track of a call and its timing rules.

    `emit` sends an event to the client; `hang_up(reason, initiator)` ends the call (soon, not in the
    caller's stack); `ending` says whether the call is ending; `open_media(source)` reads a file or URL as
    16 kHz mono samples (raising UrlRefused, MediaNotFound, FetchError, AudioFileError or OSError);
    `bot_done` is told when the bot's audio played out; `now` is the clock in ms; `track_id` is the trackId
    of its events.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[dict[str, Any]], None],
        hang_up: Callable[[str, str], None],
        ending: Callable[[], bool],
        open_media: Callable[[str], Awaitable[np.ndarray]],
        bot_done: Callable[[], None] = lambda: None,
        now: Callable[[], int] = events.now_ms,
        track_id: str = SERVER_SIDE_TRACK,
    ) -> None:
        self.call_id = call_id
        self.track_id = track_id
        self._emit = emit
        self._hang_up = hang_up
        self._ending = ending
        self._open_media = open_media
        self._bot_done = bot_done
        self.now = now
        self.track: ServerTrack | None = None
        self.muted = False
        self._silence_at: int | None = None  # when a pending waitInputTimeout fires (ms)
        self._silence_since = 0
        self._silence_ms = 0

    # --- producers -----------------------------------------------------------------------------------------

    def start(self, track: ServerTrack) -> ServerTrack:
        """Put a new track on the server side, replacing (interrupting) whatever plays there."""
        if self.track is not None:
            self.finish(natural=False)
        self.input_detected()  # a new track is an answer too: the pending waitInputTimeout no longer applies
        self.track = track
        self._emit(
            events.event(
                "trackStart", track_id=self.track_id, timestamp=track.started_ms, play_id=track.play_id
            )
        )
        return track

    def play(
        self,
        url: str,
        play_id: str | None = None,
        auto_hangup: bool = False,
        wait_input_timeout: int = 0,
        source_field: str = "play.url",
        loop: bool = False,
        offset_ms: int = 0,
    ) -> ServerTrack:
        """Play a file or URL (its playId defaults to the URL) from `offset_ms` into it; it loads beside the
        clock. An offset past the end plays nothing: the track ends on the next tick, as an empty file's."""
        track = self.start(
            ServerTrack(
                play_id=play_id or url,
                source=url,
                started_ms=self.now(),
                auto_hangup=auto_hangup,
                wait_input_timeout=wait_input_timeout,
                source_field=source_field,
                offset_ms=offset_ms,
            )
        )
        name = "moh" if loop else "load"
        track.loader = asyncio.create_task(self._load(track, loop), name=f"call:{self.call_id}:{name}")
        return track

    def start_tts(self, play_id: str | None, player: TtsPlayer, run: object) -> ServerTrack:
        return self.start(
            ServerTrack(play_id=play_id, source="tts", started_ms=self.now(), player=player, tts=run)
        )

    def play_moh(self, url: str) -> None:
        """Music on hold during a transfer: the file starts over until something replaces it."""
        self.play(url, source_field="refer.options.moh", loop=True)

    def end_moh(self) -> None:
        track = self.track
        if track is None:
            return
        if isinstance(track.player, FilePlayer) and track.player.loop:
            self.finish(natural=False)
        elif track.player is None and track.loader is not None:
            self.finish(natural=False)

    def start_bridge(self, player: BridgePlayer, ssrc: int) -> None:
        self.start(ServerTrack(play_id=None, source="refer", started_ms=self.now(), player=player, ssrc=ssrc))

    def end_bridge(self, player: BridgePlayer) -> None:
        if self.track is not None and self.track.player is player:
            self.finish(natural=False)

    def start_bot(self, player: BotPlayer) -> None:
        self.start(ServerTrack(play_id=None, source="mediaPass", started_ms=self.now(), player=player))

    async def _load(self, track: ServerTrack, loop: bool) -> None:
        source = track.source
        try:
            samples = await self._open_media(source)
        except UrlRefused as exc:
            if self.track is track:
                message = exc.for_field(track.source_field, redact_url(source))
                self._emit(events.error(self.track_id, f"filetrack: {redact_url(source)}", message, 403))
                self.finish(natural=True)
            return
        except (MediaNotFound, FetchError, AudioFileError, OSError) as exc:
            if self.track is track:
                problem = f"{track.source_field}: {exc}"
                self._emit(events.error(self.track_id, f"filetrack: {redact_url(source)}", problem, 404))
                self.finish(natural=True)
            return
        except Exception:
            # A bug, not a bad file: logged with its traceback, and the track still ends (a player that never
            # came would leave the track, and the client waiting for its trackEnd, there for good).
            log.exception("loading %s failed", redact_url(source))
            if self.track is track:
                problem = f"{track.source_field}: the server failed to load it"
                self._emit(events.error(self.track_id, f"filetrack: {redact_url(source)}", problem, 500))
                self.finish(natural=True)
            return
        if self.track is track:
            track.player = FilePlayer(samples, loop=loop, offset_ms=track.offset_ms)
            track.player.paused = track.paused

    # --- commands ------------------------------------------------------------------------------------------

    def interrupt(self, graceful: bool = False) -> None:
        track = self.track
        if track is None:
            return
        if graceful and isinstance(track.player, TtsPlayer):
            track.player.graceful_stop()
        else:
            self.finish(natural=False)

    def pause(self, paused: bool) -> None:
        track = self.track
        if track is None:
            return
        track.paused = paused
        if track.player is not None:
            track.player.paused = paused

    def input_detected(self) -> None:
        """The caller spoke or keyed: a pending waitInputTimeout no longer applies."""
        self._silence_at = None

    # --- the media clock -----------------------------------------------------------------------------------

    def tick(self) -> np.ndarray | None:
        """The track's frame for this 20 ms tick (None: nothing plays); ends a track that played out."""
        if self._silence_at is not None and self.now() >= self._silence_at:
            self._silence_at = None
            self._emit(
                events.event(
                    "silence",
                    track_id=self.track_id,
                    timestamp=self.now(),
                    start_time=self._silence_since,
                    duration=self._silence_ms,
                )
            )
        track = self.track
        if track is None or track.player is None or track.player.paused:
            return None
        frame = track.player.next_frame()
        if frame is None:
            if track.player.finished:
                self.finish(natural=True)
            return None
        return SILENT_FRAME if self.muted else frame

    # --- the end of a track --------------------------------------------------------------------------------

    def finish(self, natural: bool) -> None:
        """End the track: played out (`natural`), or cut off (interrupted, replaced, the call ending)."""
        track = self.track
        if track is None:
            return
        self.track = None
        if track.loader is not None and not track.loader.done():
            track.loader.cancel()
        now = self.now()
        if isinstance(track.player, BotPlayer) and not natural:
            track.player.cut()  # an interrupt, or the app's own track: the bot's sentence is cut off
        if not natural and isinstance(track.player, TtsPlayer):
            cut = track.player.interruption()
            if cut is not None:
                self._emit(
                    events.event(
                        "interruption",
                        track_id=self.track_id,
                        timestamp=now,
                        play_id=track.play_id,
                        **cut,
                    )
                )
        self._emit(
            events.event(
                "trackEnd",
                track_id=self.track_id,
                timestamp=now,
                duration=now - track.started_ms,
                ssrc=track.ssrc,
                play_id=track.play_id,
            )
        )
        if not natural or self._ending():
            return
        if isinstance(track.player, BotPlayer):
            self._bot_done()
            return
        if isinstance(track.player, TtsPlayer) and track.player.closing:
            return  # a graceful interrupt is still an interrupt: no autoHangup, no waitInputTimeout
        if track.auto_hangup:
            self._hang_up("autohangup", "system")
        elif track.wait_input_timeout > 0:
            self._silence_at = now + track.wait_input_timeout
            self._silence_since = now
            self._silence_ms = track.wait_input_timeout

    def close(self) -> None:
        """The call is ending: the track ends cut off and nothing waits for input any more."""
        self.finish(natural=False)
        self.input_detected()
