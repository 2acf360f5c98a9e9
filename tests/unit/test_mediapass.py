"""A call's mediaPass bot (worker/call/mediapass.py), built alone from fakes: a bot link that never opens its
socket (what the bot sends is handed to the part as the link would), the real server-side track ticked by
hand. No processes, no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from common.protocol import MediaPassOption
from tests.unit.callfakes import FakeCall, fake_services
from worker.bot.link import BotLink
from worker.call.mediapass import MediaPass
from worker.call.tracks import ServerSide
from worker.media.player import BridgePlayer

SIDE = "server-side-track"


class Bot:
    """A call with its server-side track and its bot part, the bot reached (its socket is never opened)."""

    def __init__(self, dialect: str = "raw", hangup_on_close: bool | None = None) -> None:
        self.call = FakeCall()
        self.ended: list[tuple[str, str]] = []
        self.answered = False

        async def no_media(source: str) -> np.ndarray:
            raise AssertionError("the bot part plays no file")

        hooks = self.call.hooks()
        self.tracks = ServerSide(
            "c1", self.call.events.append, self.end, hooks.ending, no_media, lambda: self.part.played_out()
        )
        services = fake_services()
        self.part = MediaPass(hooks, services, self.tracks, lambda: self.answered)
        option = MediaPassOption(url="ws://bot.test/", dialect=dialect, hangup_on_close=hangup_on_close)
        self.link = BotLink(hooks, services.bot_http, option, None, self.part.bot_audio, self.part.gone)
        self.part.link = self.link

    def end(self, reason: str, initiator: str) -> None:
        self.ended.append((reason, initiator))

    def answer(self) -> None:
        self.answered = True
        self.part.media_up()

    def play_out(self) -> list[np.ndarray]:
        frames = []
        while self.tracks.track is not None:
            frame = self.tracks.tick()
            if frame is not None:
                frames.append(frame)
        return frames

    def names(self) -> list[str]:
        return [e["event"] for e in self.call.events]

    async def settled(self) -> None:
        await asyncio.gather(*self.call.tasks)


def words(ms: int) -> np.ndarray:
    return np.full(ms * 16, 1000, dtype=np.int16)


async def test_audio_from_the_bot_becomes_the_server_side_track() -> None:
    bot = Bot()
    bot.part.bot_audio(words(100))  # before the answer: it waits
    assert bot.tracks.track is None and bot.names() == []
    bot.answer()
    assert bot.tracks.track is not None and bot.tracks.track.player is bot.link.player
    assert [(e["event"], e["trackId"]) for e in bot.call.events] == [("trackStart", SIDE)]
    bot.part.bot_audio(words(40))  # more of the same: the same track
    frames = bot.play_out()
    assert len(frames) == 7 and all((f == 1000).all() for f in frames)
    assert bot.names() == ["trackStart", "trackEnd"]


async def test_the_apps_track_has_the_server_side_first() -> None:
    bot = Bot()
    bot.answer()
    bot.tracks.start_bridge(BridgePlayer(), 1)  # a transfer's far leg
    bot.part.bot_audio(words(100))
    assert bot.link.player.pending == 0 and bot.link.player.dropped == 1600


async def test_the_bot_going_away_hangs_up_after_its_last_words() -> None:
    bot = Bot()
    bot.answer()
    bot.part.bot_audio(words(60))
    bot.link._closed(None)  # the bot closed its socket
    await bot.settled()
    assert bot.call.hangups == [] and bot.call.errors == []
    assert len(bot.play_out()) == 3
    await bot.settled()
    assert bot.names() == ["trackStart", "trackEnd"]
    assert bot.call.hangups == [("bot_closed", "system")]


async def test_a_silent_bot_going_away_hangs_up_at_once_and_a_drop_is_an_error() -> None:
    bot = Bot()
    bot.answer()
    bot.link._closed(None)
    await bot.settled()
    assert bot.call.hangups == [("bot_closed", "system")]

    dropped = Bot()
    dropped.answer()
    dropped.part.bot_audio(words(60))
    dropped.link._closed("connection reset")
    await dropped.settled()
    assert [(sender, code) for sender, _, code in dropped.call.errors] == [("mediaPass", 502)]
    assert dropped.call.hangups == [("bot_lost", "system")]


async def test_with_hangup_on_close_false_the_call_outlives_its_bot() -> None:
    bot = Bot(hangup_on_close=False)
    bot.answer()
    bot.part.bot_audio(words(20))
    bot.link._closed(None)
    bot.play_out()
    await bot.settled()
    assert bot.call.hangups == [] and bot.names() == ["trackStart", "trackEnd"]


async def test_a_dtmf_digit_reaches_the_bot() -> None:
    bot = Bot(dialect="twilio")
    bot.part.digit("4")  # before the answer the stream has not started: nothing goes
    bot.answer()
    bot.part.digit("5")
    sent: list[Any] = [json.loads(m) for m in bot.link._out if isinstance(m, str)]
    assert [m["dtmf"]["digit"] for m in sent if m["event"] == "dtmf"] == ["5"]
