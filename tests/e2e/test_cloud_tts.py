"""Cloud synthesis over the real stack: a media worker speaks through a local service that follows the
provider's protocol, and the client hears it on the call."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.audio_util import peak_freq
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_tts import completed, pcm
from tests.providers.tencent_tts import TencentTtsServer, samples_for
from tests.providers.voiceapi_tts import VoiceApiTtsServer
from tests.providers.voiceapi_tts import tone as voiceapi_tone

pytestmark = pytest.mark.e2e

CREDS = {"appId": "1300", "secretId": "AKIDtts", "secretKey": "tts-secret-key"}


def tencent_option(server: TencentTtsServer, **more: object) -> dict[str, object]:
    return {"provider": "tencent", "endpoint": server.ws_url, **CREDS, **more}


async def test_tencent_streaming_session(stack: StackInfo, call_id: str) -> None:
    pieces = ["您好，", "请问有什么", "可以帮您？"]
    async with TencentTtsServer("1300", "AKIDtts", "tts-secret-key") as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(tts=tencent_option(server, speaker="101002", emotion="happy"))
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                await c.send(
                    {"command": "tts", "text": piece, "playId": "s", "streaming": True, "endOfStream": last}
                )
                await asyncio.sleep(0.1)
            await c.event("trackEnd", playId="s", timeout=10)
            [conn] = server.connections
            assert conn.path == "/stream_wsv2" and conn.query["Action"] == "TextToStreamAudioWSv2"
            assert conn.query["VoiceType"] == "101002" and conn.query["EmotionCategory"] == "happy"
            assert conn.actions == ["ACTION_SYNTHESIS"] * 3 + ["ACTION_COMPLETE"]
            assert [m["data"] for m in conn.received if m["action"] == "ACTION_SYNTHESIS"] == pieces
            want = samples_for("".join(pieces), 16000)
            assert len(c.frames) == -(-want // 320), "all the audio of the session, in 20 ms frames"
            assert abs(peak_freq(pcm(c)[:16000]) - 440) < 5
            [m] = completed(c)
            assert m["key"] == "completed.tts.tencent" and "cmdSeq" not in m["data"]
        finally:
            await c.close()
    assert "tts-secret-key" not in (stack.recorder_path / f"{call_id}.events.jsonl").read_text()


async def test_tencent_one_shot_interruption_has_a_position(stack: StackInfo, call_id: str) -> None:
    text = "您好请问有什么可以帮您的吗我们今天有特别优惠活动欢迎咨询"
    async with TencentTtsServer("1300", "AKIDtts", "tts-secret-key") as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite()
            option = tencent_option(server, samplerate=8000)
            await c.send({"command": "tts", "text": text, "playId": "o", "option": option})
            await c.event("trackStart", playId="o")
            while len(c.frames) < 30:
                await asyncio.sleep(0.01)
            await c.send({"command": "interrupt"})
            cut = await c.event("interruption", playId="o")
            await c.event("trackEnd", playId="o")
            [conn] = server.connections
            assert (
                conn.path == "/stream_ws"
                and conn.query["Text"] == text
                and conn.query["SampleRate"] == "8000"
            )
            assert cut["current"] == len(c.frames) * 20
            assert abs(cut["position"] - (cut["current"] - 1) // 50) <= 2, "the character being spoken"
            assert cut["totalDuration"] == samples_for(text, 8000) * 1000 // 8000
        finally:
            await c.close()


async def test_tencent_refusal_is_an_error_event(stack: StackInfo, call_id: str) -> None:
    async with TencentTtsServer("1300", "AKIDtts", "another-key") as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(tts=tencent_option(server))
            await c.send({"command": "tts", "text": "你好", "playId": "x"})
            err = await c.event("error", sender="tencent_tts")
            assert err["code"] != 0 and err["trackId"] == "server-side-track"
            await c.event("trackEnd", playId="x")
            assert "tts-secret-key" not in json.dumps(c.events) and "AKIDtts" not in json.dumps(c.events)
        finally:
            await c.close()


async def test_voiceapi_speaks(stack: StackInfo, call_id: str) -> None:
    async with VoiceApiTtsServer() as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(tts={"provider": "voiceapi", "endpoint": server.ws_url.replace("ws:", "http:")})
            await c.send({"command": "tts", "text": "Hello there, friend.", "speaker": "3", "playId": "v"})
            await c.event("trackEnd", playId="v", timeout=10)
            [conn] = server.connections
            assert conn.query["sid"] == "3" and conn.texts == ["Hello there, friend."]
            want = voiceapi_tone("Hello there, friend.", 16000)
            assert len(c.frames) == -(-len(want) // 320)
            assert np.array_equal(pcm(c)[: len(want)], want)
            assert completed(c)[0]["key"] == "completed.tts.voiceapi"
        finally:
            await c.close()
