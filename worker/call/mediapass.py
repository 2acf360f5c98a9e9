"""A call's mediaPass bot (`option.mediaPass`): the caller's audio and keys go to the bot's socket, the bot's
audio plays as the server-side track.

The link itself (the socket, its dialects, the bot's player) is worker/bot/; this part ties it to the call.
The bot's audio takes the server-side track only when nothing else plays there: the app's `play`, `tts` or
a transfer has it first, and the bot's audio is dropped meanwhile. When the bot goes away the call ends
(unless `hangupOnClose` is false): at once if its socket dropped, after its last words if it closed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common import events
from worker.bot.link import BotLink
from worker.call.services import CallHooks, MediaServices
from worker.call.tracks import ServerSide


class MediaPass:
    """The bot of one call, once `connect` has reached it. `hooks` is the call's; `tracks` its server-side
    track; `answered` says whether the call is answered (the bot's audio waits for it)."""

    def __init__(
        self, hooks: CallHooks, services: MediaServices, tracks: ServerSide, answered: Callable[[], bool]
    ) -> None:
        self.hooks = hooks
        self.services = services
        self.tracks = tracks
        self.answered = answered
        self.link: BotLink | None = None

    async def connect(self, option: Any) -> bool:
        """Open the bot's socket if the option names one; False (the client told why) if not."""
        if option.media_pass is None or self.link is not None:
            return True
        link = BotLink(
            self.hooks, self.services.bot_http, option.media_pass, option.extra, self.bot_audio, self.gone
        )
        refusal = await link.connect()
        if refusal is None and self.hooks.ending():  # the call ended while the bot was being reached
            await link.close()
            return False
        if refusal is None:
            self.link = link
            return True
        code, problem = refusal
        self.hooks.error("mediaPass", problem, code)
        self.hooks.emit(
            events.event("reject", track_id=self.hooks.call_id, reason=f"mediaPass: {problem}", code=code)
        )
        return False

    def media_up(self) -> None:
        """The call is answered: caller audio flows to the bot, and what it said meanwhile plays."""
        link = self.link
        if link is None:
            return
        link.start()
        if link.player.pending and self.tracks.track is None:
            self.tracks.start_bot(link.player)

    def caller_audio(self, heard: np.ndarray) -> None:
        """The caller's audio as the call hears it (silence while muted)."""
        if self.link is not None:
            self.link.caller_audio(heard)

    def digit(self, digit: str) -> None:
        if self.link is not None:
            self.link.digit(digit)

    def bot_audio(self, pcm: np.ndarray) -> None:
        """Audio from the bot: it plays as the server-side track, unless the app put something else there."""
        link = self.link
        if link is None or self.hooks.ending():
            return
        track = self.tracks.track
        if track is not None and track.player is not link.player:
            link.player.dropped += len(pcm)  # the app's play, tts or transfer has the track
            return
        if link.player.add(pcm) and track is None and self.answered():
            self.tracks.start_bot(link.player)

    def played_out(self) -> None:
        """The bot's audio played out: if the bot has gone and the option says so, the call ends."""
        link = self.link
        if link is not None and link.gone and link.hangup_on_close:
            self.hooks.spawn(self.hooks.hangup("bot_closed", "system"), "bot-closed")

    def gone(self, problem: str | None) -> None:
        """The bot's socket closed: a drop is an error; the call ends unless the option says otherwise."""
        link = self.link
        if link is None or self.hooks.ending():
            return
        if problem is not None:
            self.hooks.error(
                "mediaPass", f"the bot's connection dropped: {problem}", 502, track_id=self.hooks.server_track
            )
        if not link.hangup_on_close:
            return
        track = self.tracks.track
        if problem is not None:
            self.hooks.spawn(self.hooks.hangup("bot_lost", "system"), "bot-lost")
        elif track is None or track.player is not link.player or not link.player.pending:
            self.hooks.spawn(self.hooks.hangup("bot_closed", "system"), "bot-closed")
        # else the bot's last words play out first; the end of its track hangs up

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()
