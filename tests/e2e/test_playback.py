"""`play` over the real stack: audio content, pacing, codecs, cache, interrupt, pause, mute, autoHangup.

One real-stack path per command; the track's timing rules themselves (frames per tick, event order and
fields, replacing a track, pause, mute, autoHangup, waitInputTimeout) are unit-tested on a virtual clock in
tests/unit/test_tracks.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from common.embedded import free_port
from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.local_http import serve_app

pytestmark = pytest.mark.e2e


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def pcm(frames: list[tuple[float, bytes]]) -> np.ndarray:
    return np.frombuffer(b"".join(f for _, f in frames), dtype="<i2")


async def test_play_wav_paced_in_real_time(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a440.wav", tone(440, 1.0))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "playId": "p1"})
        start = await c.event("trackStart", trackId="server-side-track")
        assert start["playId"] == "p1"
        end = await c.event("trackEnd", trackId="server-side-track", timeout=5)
        assert end["playId"] == "p1" and isinstance(end["ssrc"], int)
        assert 900 <= end["duration"] <= 2000
        await asyncio.sleep(0.1)
        frames = list(c.frames)
        assert len(frames) == 50 and all(len(f) == 640 for _, f in frames)
        span = frames[-1][0] - frames[0][0]
        assert 0.75 <= span <= 1.4, f"49 frame intervals took {span:.3f}s"
        audio = pcm(frames)
        assert abs(peak_freq(audio) - 440) < 10
        assert rms(audio) > 3000
    finally:
        await c.close()


@pytest.mark.parametrize("codec,size", [("pcmu", 160), ("pcma", 160), ("g722", 160)])
async def test_play_in_call_codec(
    stack: StackInfo, call_id: str, tmp_path: Path, codec: str, size: int
) -> None:
    from worker.media.codecs import make_codec

    wav = write_wav(tmp_path / "t.wav", tone(440, 0.6))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(codec=codec)
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track")
        await asyncio.sleep(0.1)
        assert len(c.frames) == 30 and all(len(f) == size for _, f in c.frames)
        dec = make_codec(codec)
        audio = np.concatenate([dec.decode(f) for _, f in c.frames])
        assert abs(peak_freq(audio[1600:]) - 440) < 15
    finally:
        await c.close()


async def test_play_url_downloads_once_into_cache(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    body = write_wav(tmp_path / "web.wav", tone(1000, 0.3)).read_bytes()
    hits = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=body, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/media/tone.wav", serve)
    runner, port = await serve_app(app)
    url = f"http://127.0.0.1:{port}/media/tone.wav"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        for _ in range(2):
            mark = len(c.events)
            await c.send({"command": "play", "url": url})
            await c.event("trackEnd", trackId="server-side-track", after=mark)
            await asyncio.sleep(0.05)
        assert hits == ["/media/tone.wav"]
        cached = stack.cache_path / f"{hashlib.sha256(url.encode()).hexdigest()}.wav"
        assert cached.read_bytes() == body
        assert len(c.frames) == 30
        assert abs(peak_freq(pcm(c.frames)) - 1000) < 15
    finally:
        await c.close()
        await runner.cleanup()


async def test_play_mp3(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    import av

    path = tmp_path / "tone.mp3"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3", rate=16000)
        stream.layout = "mono"
        samples = tone(600, 1.0)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(path)})
        await c.event("trackEnd", trackId="server-side-track")
        await asyncio.sleep(0.05)
        assert 48 <= len(c.frames) <= 56
        assert abs(peak_freq(pcm(c.frames)) - 600) < 15
    finally:
        await c.close()


async def test_bad_url_and_missing_file(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        missing = str(tmp_path / "nope.wav")
        await c.send({"command": "play", "url": missing})
        err = await c.event("error")
        assert err["sender"] == f"filetrack: {missing}" and err["trackId"] == "server-side-track"
        await c.event("trackEnd", trackId="server-side-track", playId=missing)
        url = f"http://127.0.0.1:{free_port()}/x.wav"
        await c.send({"command": "play", "url": url})
        err = await c.event("error", sender=f"filetrack: {url}")
        assert "cannot download" in err["error"]
        await c.event("trackEnd", trackId="server-side-track", playId=url)
        garbage = tmp_path / "garbage.wav"
        garbage.write_bytes(b"this is not audio" * 100)
        await c.send({"command": "play", "url": str(garbage)})
        await c.event("error", sender=f"filetrack: {garbage}")
        assert c.frames == []
        await c.send({"command": "history", "speaker": "u", "text": "still alive"})
        await c.event("addHistory")
    finally:
        await c.close()


async def test_interrupt_pause_resume(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "long.wav", tone(440, 3.0))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "playId": "a"})
        await c.event("trackStart", trackId="server-side-track")
        while len(c.frames) < 10:
            await asyncio.sleep(0.02)
        await c.send({"command": "pause"})
        await asyncio.sleep(0.2)
        held = len(c.frames)
        await asyncio.sleep(0.5)
        assert len(c.frames) == held, "no audio while paused"
        await c.send({"command": "resume"})
        await asyncio.sleep(0.4)
        assert len(c.frames) > held + 10
        t0 = time.monotonic()
        await c.send({"command": "interrupt"})
        end = await c.event("trackEnd", trackId="server-side-track")
        assert time.monotonic() - t0 < 0.5 and end["playId"] == "a"
        await asyncio.sleep(0.2)
        count = len(c.frames)
        assert count < 150
        await asyncio.sleep(0.3)
        assert len(c.frames) == count, "no audio after interrupt"
    finally:
        await c.close()


async def test_mute_server_track(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "m.wav", tone(440, 0.6))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "mute", "trackId": "server-side-track"})
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track")
        await asyncio.sleep(0.05)
        assert len(c.frames) == 30 and rms(pcm(c.frames)) == 0
        n = len(c.frames)
        mark = len(c.events)
        await c.send({"command": "unmute"})
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track", after=mark)
        await asyncio.sleep(0.05)
        assert rms(pcm(c.frames[n:])) > 3000
        await c.send({"command": "mute", "trackId": "no-such-track"})
        err = await c.event("error")
        assert "no-such-track" in err["error"]
    finally:
        await c.close()


async def test_auto_hangup_and_wait_input_timeout(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "s.wav", tone(440, 0.3))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "waitInputTimeout": 400})
        end = await c.event("trackEnd", trackId="server-side-track")
        silence = await c.event("silence", timeout=3)
        assert silence["trackId"] == "server-side-track" and silence["duration"] == 400
        assert silence["startTime"] == end["timestamp"]
        assert 350 <= silence["timestamp"] - end["timestamp"] <= 1500
        await c.send({"command": "play", "url": str(wav), "autoHangup": True})
        hangup = await c.event("hangup", timeout=5)
        assert hangup["reason"] == "autohangup" and hangup["initiator"] == "system"
        ends = [e for e in c.events if e["event"] == "trackEnd"]
        assert ends[-1]["trackId"] == call_id
        await c.wait_closed()
    finally:
        await c.close()
