"""mediaPass and SIP: SIPp phones calling in to a scripted bot, and a bot call transferred to a person."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from common.embedded import free_port
from tests.audio_util import peak_freq, rms, tone
from tests.bots.ws_bot import BotConnection, bot_server
from tests.e2e.conftest import StackInfo, Webhook
from tests.e2e.test_media_pass import frames_of
from tests.e2e.test_recorder import read_stereo, stream
from tests.e2e.test_sipp import answer_next
from tests.e2e.test_twilio_stream import bot_heard, media
from tests.sip.sipp import Sipp

pytestmark = pytest.mark.e2e


async def test_sipp_call_answered_by_a_twilio_bot(inbound: StackInfo, webhook: Webhook) -> None:
    async def script(conn: BotConnection) -> None:
        sid = (await conn.event("start"))["streamSid"]
        await conn.ws.send_str(media(sid, tone(600, 1.0, rate=8000, amp=0.3)))
        await conn.closed.wait()

    uac = Sipp("uac_call", remote=("127.0.0.1", inbound.sip_port), variables={"hold_ms": 2500})
    async with bot_server(script) as bot, uac:
        c, hook = await answer_next(inbound, webhook)
        call_id = str(hook["dialogId"])
        try:
            option = {"mediaPass": {"url": bot.url, "dialect": "twilio"}, "recorder": {}}
            await c.send({"command": "accept", "option": option})
            await c.event("answer")
            conn = await bot.connection()
            start = await conn.event("start")
            assert start["start"]["callSid"] == call_id
            await c.event("trackEnd", trackId="server-side-track", timeout=5)
            hangup = await c.event("hangup", timeout=10)
            assert hangup["initiator"] == "caller", "the phone hung up"
            stop = await conn.event("stop", timeout=3)
            assert stop["stop"]["callSid"] == call_id
        finally:
            await c.close()
        result = await uac.wait(timeout=10)
    result.assert_ok()
    heard = bot_heard(conn)
    assert len(heard) > 8000 * 2, "the phone's speech streamed to the bot"
    assert rms(heard) > 300
    _, _left, right = read_stereo(inbound.recorder_path / f"{call_id}.wav")
    loud = np.flatnonzero(np.abs(right) > 3000)
    segment = right[loud[0] : loud[0] + 16000]
    assert abs(peak_freq(segment) - 600) < 15, "the bot's tone went to the phone (and the recording)"


async def test_sipp_call_refused_when_the_bot_is_unreachable(inbound: StackInfo, webhook: Webhook) -> None:
    uac = Sipp("uac_rejected", remote=("127.0.0.1", inbound.sip_port), variables={"code": 503})
    async with uac:
        c, _hook = await answer_next(inbound, webhook)
        try:
            url = f"ws://127.0.0.1:{free_port()}/gone"
            await c.send({"command": "accept", "option": {"mediaPass": {"url": url, "dialect": "twilio"}}})
            err = await c.event("error", sender="mediaPass")
            assert err["code"] == 502
            await c.event("reject")
            hangup = await c.event("hangup")
            assert hangup["reason"] == "failed"
            assert "answer" not in c.names()
        finally:
            await c.close()
        result = await asyncio.wait_for(uac.wait(timeout=10), 15)
    result.assert_ok()


async def test_app_transfers_a_bot_call_to_a_person(stack: StackInfo, call_id: str) -> None:
    from tests.e2e.client import CallClient
    from tests.e2e.sip_peer import play_tone, sip_peer

    async def script(conn: BotConnection) -> None:  # a bot that talks all the time
        sid = (await conn.event("start"))["streamSid"]
        while not conn.closed.is_set():
            await conn.ws.send_str(media(sid, tone(600, 0.02, rate=8000, amp=0.3)))
            await asyncio.sleep(0.02)

    async with bot_server(script) as bot, sip_peer() as agent:
        c = await CallClient.open(stack.ws, "/call", call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"})
            conn = await bot.connection()
            await c.event("trackStart", trackId="server-side-track")
            await c.send({"command": "refer", "target": agent.uri, "options": {"timeout": 5}})
            await c.event("answer", timeout=5, refer=True)
            leg, _phone = await agent.leg()
            before = len(c.frames)
            heard_before = len(conn.events("media"))
            await asyncio.gather(stream(c, frames_of(tone(1000, 1.0))), play_tone(leg, 440, 1.0))
            got = np.frombuffer(b"".join(f for _, f in c.frames[before:]), dtype=np.int16)
            assert abs(peak_freq(got[len(got) // 3 :][:8000]) - 440) < 30, "the person, not the bot"
            assert len(conn.events("media")) - heard_before > 30, "the bot still hears the caller"
            await c.send({"command": "hangup"})
            await c.event("hangup", trackId=call_id)
            await conn.event("stop", timeout=3)
        finally:
            await c.close()
