"""Cloud recognizers over the real stack: a media worker streams the call's audio to a local service that
speaks the provider's protocol, and the client gets asrDelta / asrFinal / metrics events."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from common.embedded import free_port
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_recorder import stream
from tests.providers.tencent_asr import TencentAsrServer
from tests.providers.voiceapi_asr import VoiceApiAsrServer
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e

SCRIPT = ["book a table for two", "a window seat please"]
# The caller's speech goes twice as fast as real time: nothing here is timed against the wall clock, and the
# utterances' times come from the server's audio clock (samples counted), not from when frames arrived.
FAST = 2.0


def frames() -> list[bytes]:
    audio, _ = with_silence(
        0.4, speech("Please book a table for two."), 0.8, speech("A window seat, please."), 0.8
    )
    return [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]


async def test_tencent_asr_end_to_end(stack: StackInfo, call_id: str) -> None:
    async with TencentAsrServer("1300", "AKIDe2e", "tc-secret-key", SCRIPT) as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            asr = {
                "provider": "tencent",
                "appId": "1300",
                "secretId": "AKIDe2e",
                "secretKey": "tc-secret-key",
                "endpoint": server.ws_url,
                "modelType": "16k_en",
            }
            await c.invite(asr=asr, vad={"type": "webrtc"})
            async with aiohttp.ClientSession() as http, http.get(f"{stack.base}/call/lists") as resp:
                listing = await resp.text()
            assert call_id in listing and "tc-secret-key" not in listing and "AKIDe2e" not in listing
            await stream(c, frames(), speed=FAST)
            finals = [await c.event("asrFinal", index=i, timeout=5) for i in range(2)]
            assert [f["text"] for f in finals] == SCRIPT
            assert all(f["trackId"] == call_id and f["endTime"] > f["startTime"] for f in finals)
            deltas = [e for e in c.events if e["event"] == "asrDelta"]
            assert deltas and all(c.events.index(d) < c.events.index(finals[d["index"]]) for d in deltas)
            speaking = [e for e in c.events if e["event"] == "speaking"]
            assert speaking and c.events.index(speaking[0]) < c.events.index(deltas[0])
            keys = [e["key"] for e in c.events if e["event"] == "metrics"]
            assert "ttfb.asr.tencent" in keys and keys.count("completed.asr.tencent") == 2
            await c.send({"command": "hangup"})
            await c.wait_closed()
        finally:
            await c.close()
        assert server.connections[0].query["engine_model_type"] == "16k_en"
        assert not [e for e in c.events if e["event"] == "error"]
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text()
    assert "tc-secret-key" not in dump and "AKIDe2e" not in dump


async def test_voiceapi_asr_end_to_end(stack: StackInfo, call_id: str) -> None:
    async with VoiceApiAsrServer(SCRIPT) as server:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(asr={"provider": "voiceapi", "endpoint": server.ws_url})
            await stream(c, frames(), speed=FAST)
            finals = [await c.event("asrFinal", index=i, timeout=5) for i in range(2)]
            assert [f["text"] for f in finals] == SCRIPT
            assert finals[1]["startTime"] == finals[0]["endTime"]
            keys = [e["key"] for e in c.events if e["event"] == "metrics"]
            assert keys.count("completed.asr.voiceapi") == 2
        finally:
            await c.close()


async def test_failing_provider_leaves_the_call_working(stack: StackInfo, call_id: str) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        asr = {"provider": "tencent", "appId": "1", "secretId": "sid", "secretKey": "skey", "endpoint": dead}
        await c.invite(asr=asr, vad={"type": "webrtc"})
        err = await c.event("error", sender="tencent_asr", timeout=5)
        assert err["code"] == 502 and "skey" not in json.dumps(c.events)
        await stream(c, frames()[:120], speed=FAST)
        await c.event("speaking", timeout=3)  # VAD goes on without the recognizer
        await c.send({"command": "history", "speaker": "user", "text": "still here"})
        await c.event("addHistory")
        await asyncio.sleep(0.1)
        assert "hangup" not in c.names()
    finally:
        await c.close()
