"""`option.mediaPass` (raw PCM, RustPBX's dialect) over the real stack, with a bot served by the test."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from common.embedded import free_port
from tests.audio_util import peak_freq, rms, tone
from tests.bots.ws_bot import BotConnection, bot_server, idle
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_recorder import read_stereo, stream

pytestmark = pytest.mark.e2e


def frames_of(audio: np.ndarray) -> list[bytes]:
    return [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]


def received(c: CallClient, since: float = 0.0) -> np.ndarray:
    return np.frombuffer(b"".join(f for t, f in c.frames if t >= since), dtype="<i2")


def resampled_tone(freq: float, seconds: float, rate: int) -> bytes:
    return tone(freq, seconds, rate=rate, amp=0.3).astype("<i2").tobytes()


@pytest.mark.parametrize(
    "out_rate,packet,in_rate",
    [(16000, 640, 16000), (8000, 320, 8000), (16000, 3200, 24000), (48000, 1920, 44100), (8000, None, 16000)],
)
async def test_raw_bot_hears_the_caller_and_is_heard(
    stack: StackInfo, call_id: str, out_rate: int, packet: int | None, in_rate: int
) -> None:
    async def script(conn: BotConnection) -> None:
        # The whole reply at once: the server paces it out in 20 ms frames.
        await conn.ws.send_bytes(resampled_tone(600, 1.0, in_rate))
        await conn.closed.wait()

    option: dict[str, object] = {"inputSampleRate": in_rate, "outputSampleRate": out_rate}
    if packet is not None:
        option["packetSize"] = packet
    expected_packet = packet or out_rate // 50 * 2
    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, **option})
            conn = await bot.connection()
            assert conn.query == {"sample_rate": str(out_rate), "packet_size": str(expected_packet)}
            start = await c.event("trackStart", trackId="server-side-track")
            await stream(c, frames_of(tone(1000, 1.0, amp=0.3)))
            end = await c.event("trackEnd", trackId="server-side-track", timeout=3)
            assert start.get("playId") is None and 900 <= end["duration"] <= 1600
            await asyncio.sleep(0.2)
            sizes = {len(d) for _, d in conn.binary}
            assert sizes == {expected_packet}, f"every packet is exactly packetSize: {sizes}"
            heard = conn.pcm()
            # 1 s of caller audio at the bot's rate, less what is still short of a whole packet.
            assert out_rate - expected_packet // 2 - 400 <= len(heard) <= out_rate + 400
            assert abs(peak_freq(heard, rate=out_rate) - 1000) < 15
            assert rms(heard[out_rate // 10 :]) > 5000
            played = received(c)
            assert 49 * 320 <= len(played) <= 52 * 320, f"{len(played) / 320} frames of the bot's second"
            assert abs(peak_freq(played) - 600) < 10 and rms(played) > 5000
            await c.send({"command": "hangup"})
            await c.event("hangup", reason="normal_clearing")
            await asyncio.wait_for(conn.closed.wait(), 3)
            assert conn.close_code == 1000
        finally:
            await c.close()


async def test_interrupt_cuts_the_bot_sentence_and_the_next_one_plays(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        await conn.ws.send_bytes(resampled_tone(600, 4.0, 16000))  # queued at once
        for _ in range(25):  # and the same sentence keeps coming, in real time, for half a second
            await asyncio.sleep(0.02)
            await conn.ws.send_bytes(resampled_tone(600, 0.02, 16000))
        await asyncio.sleep(0.5)  # a pause, then the next sentence
        await conn.ws.send_bytes(resampled_tone(900, 0.4, 16000))
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url})
            await c.event("trackStart", trackId="server-side-track")
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            await c.send({"command": "interrupt"})
            end = await c.event("trackEnd", trackId="server-side-track", timeout=2)
            assert end["duration"] < 1000
            second = await c.event("trackStart", trackId="server-side-track", after=c.events.index(end))
            assert second.get("playId") is None
            await c.event("trackEnd", trackId="server-side-track", after=c.events.index(second), timeout=3)
            late_600 = [f for t, f in c.frames if sent + 0.1 < t and rms(np.frombuffer(f, "<i2")) > 1000]
            audio = np.frombuffer(b"".join(late_600), dtype="<i2")
            assert 18 * 320 <= len(audio) <= 22 * 320, "after the interrupt, only the next sentence plays"
            assert abs(peak_freq(audio) - 900) < 15
        finally:
            await c.close()


async def test_play_takes_the_track_from_the_bot(stack: StackInfo, call_id: str, tmp_path) -> None:  # noqa: ANN001
    from tests.e2e.test_playback import write_wav

    wav = write_wav(tmp_path / "a.wav", tone(440, 0.6, amp=0.3))

    async def script(conn: BotConnection) -> None:
        for _ in range(150):  # 3 s of bot speech in real time
            await conn.ws.send_bytes(resampled_tone(600, 0.02, 16000))
            await asyncio.sleep(0.02)
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url})
            await c.event("trackStart", trackId="server-side-track")
            await asyncio.sleep(0.2)
            await c.send({"command": "play", "url": str(wav), "playId": "announce"})
            await c.event("trackStart", trackId="server-side-track", playId="announce")
            t0 = c.frames[-1][0]
            await c.event("trackEnd", trackId="server-side-track", playId="announce", timeout=3)
            t1 = c.frames[-1][0]
            announce = np.frombuffer(b"".join(f for t, f in c.frames if t0 < t <= t1), dtype="<i2")
            assert abs(peak_freq(announce) - 440) < 10, "the bot does not talk over the app's announcement"
        finally:
            await c.close()


async def test_bot_audio_is_recorded_on_the_right_channel(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        await conn.ws.send_bytes(resampled_tone(600, 1.0, 16000))
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url}, recorder={})
            await stream(c, frames_of(tone(1000, 1.2, amp=0.3)))
            await c.send({"command": "hangup"})
            await c.wait_closed()
        finally:
            await c.close()
    _, left, right = read_stereo(stack.recorder_path / f"{call_id}.wav")
    assert abs(peak_freq(left[:16000]) - 1000) < 15
    assert abs(peak_freq(right[:16000]) - 600) < 15 and rms(right[:16000]) > 3000


async def test_bot_that_cannot_be_reached_fails_the_invite(stack: StackInfo, call_id: str) -> None:
    url = f"ws://127.0.0.1:{free_port()}/nobody?token=s3cret"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {"mediaPass": {"url": url}}})
        err = await c.event("error", sender="mediaPass")
        assert err["code"] == 502 and "s3cret" not in err["error"] and "127.0.0.1" in err["error"]
        reject = await c.event("reject")
        assert reject["code"] == 502 and reject["reason"].startswith("mediaPass:")
        hangup = await c.event("hangup")
        assert hangup["reason"] == "failed"
        assert "answer" not in c.names()
    finally:
        await c.close()


async def test_bot_refusing_the_upgrade_fails_the_invite(stack: StackInfo, call_id: str) -> None:
    async with bot_server(idle) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.send({"command": "invite", "option": {"mediaPass": {"url": bot.url + "x"}}})
            err = await c.event("error", sender="mediaPass")
            assert "HTTP 404" in err["error"]
            await c.event("hangup", reason="failed")
        finally:
            await c.close()


async def test_bot_dropping_is_an_error_and_ends_the_call(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        await asyncio.sleep(0.3)
        conn.abort()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url})
            err = await c.event("error", sender="mediaPass", timeout=3)
            assert err["code"] == 502 and err["trackId"] == "server-side-track"
            hangup = await c.event("hangup")
            assert hangup["reason"] == "bot_lost" and hangup["initiator"] == "system"
        finally:
            await c.close()


async def test_bot_closing_plays_its_last_words_then_hangs_up(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        await conn.ws.send_bytes(resampled_tone(600, 0.6, 16000))
        await conn.ws.close()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url})
            hangup = await c.event("hangup", timeout=3)
            assert hangup["reason"] == "bot_closed"
            assert "error" not in c.names(), "a bot that closes normally hung up; nothing went wrong"
            names = c.names()
            assert names.index("trackEnd") < names.index("hangup")
            played = received(c)
            assert len(played) >= 29 * 320, "the goodbye was played out before the hangup"
        finally:
            await c.close()


async def test_call_outlives_the_bot_when_asked(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        await asyncio.sleep(0.2)
        conn.abort()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url + "?token=s3cret", "hangupOnClose": False})
            async with aiohttp.ClientSession() as http, http.get(f"{stack.base}/call/lists") as resp:
                listing = await resp.text()
            assert call_id in listing and "s3cret" not in listing and "token=***" in listing
            await c.event("error", sender="mediaPass", timeout=3)
            await c.send({"command": "history", "speaker": "app", "text": "still here"})
            await c.event("addHistory")
            assert "hangup" not in c.names()
            await stream(c, frames_of(tone(1000, 0.2)))  # caller audio with no bot to go to
            await c.send({"command": "hangup"})
            await c.event("hangup", reason="normal_clearing")
        finally:
            await c.close()


async def test_bad_media_pass_options_are_refused(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {"mediaPass": {"url": "http://x", "packetSize": 3}}})
        err = await c.event("error")
        assert err["code"] == 400 and "option.mediaPass.url" in err["error"]
        await c.send({"command": "invite", "option": {"mediaPass": {"url": "ws://x", "packetSize": 3}}})
        err = await c.event("error", after=c.events.index(err) + 1)
        assert "option.mediaPass.packetSize" in err["error"]
    finally:
        await c.close()
