"""Inbound SIP calls: the webhook, `/call/sip?id=<dialogId>`, accept / reject / ringing, CANCEL, timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.audio_util import peak_freq, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, Webhook
from tests.e2e.sip_peer import Phone, play_tone
from tests.e2e.test_playback import write_wav
from worker.sip.agent import SipAgent
from worker.sip.leg import SipLeg
from worker.sip.message import Headers
from worker.sip.rtp import PortPool

pytestmark = pytest.mark.e2e


class Caller:
    """A phone in the test calling the server."""

    def __init__(self) -> None:
        self.agent = SipAgent("127.0.0.1", 0)
        self.phone = Phone()
        self.leg: SipLeg | None = None
        self.task: asyncio.Task[None] | None = None

    async def call(
        self, port: int, user: str = "bot", timeout: float = 10.0, headers: Headers | None = None
    ) -> SipLeg:
        await self.agent.start()
        self.leg = SipLeg(self.agent, PortPool(44000, 45000), self.phone, "uac")
        target = f"sip:{user}@127.0.0.1:{port}"
        dial = self.leg.dial("sip:alice@127.0.0.1", target, headers, timeout=timeout)
        self.task = asyncio.ensure_future(dial)
        return self.leg

    async def close(self) -> None:
        if self.leg is not None:
            self.leg.hangup()
        if self.task is not None:
            self.task.cancel()
        await asyncio.sleep(0.05)
        await self.agent.close()


async def test_webhook_incoming_accept_audio_and_bye(
    inbound: StackInfo, webhook: Webhook, tmp_path: Path
) -> None:
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.0))
    caller = Caller()
    extra = Headers([
        ("X-Customer-Id", "c-42"),
        ("P-Asserted-Identity", "<sip:+15550100@carrier.example>"),
        ("Diversion", "<sip:100@pbx.example>;reason=no-answer"),
        ("Diversion", "<sip:200@pbx.example>;reason=busy"),
        # Credentials never reach the app, nor does anything else of the base protocol.
        ("Authorization", 'Digest username="alice", realm="x", nonce="n", uri="sip:bot", response="s3cr3t"'),
        ("Proxy-Authorization", 'Digest username="alice", response="t0ps3cr3t"'),
        ("Subject", "hello"),
    ])  # fmt: skip
    try:
        leg = await caller.call(inbound.sip_port, headers=extra)
        hook = await webhook.next()
        assert hook["event"] == "invite" and hook["caller"] == "sip:alice@127.0.0.1"
        assert hook["callee"] == f"sip:bot@127.0.0.1:{inbound.sip_port}"
        assert hook["offer"].startswith("v=0") and any(h.startswith("Call-ID:") for h in hook["headers"])
        dialog_id = hook["dialogId"]
        assert dialog_id.startswith(leg.call_id + "-" + leg.local_tag + "-")
        async with aiohttp.ClientSession() as http, http.get(f"{inbound.base}/call/lists") as resp:
            listed = {e["id"]: e for e in (await resp.json())["calls"]}
        assert listed[dialog_id]["call_type"] == "sip"
        c = await CallClient.open(inbound.ws, "/call/sip", call_id=dialog_id)
        try:
            incoming = await c.event("incoming")
            assert incoming["caller"] == "sip:alice@127.0.0.1" and "m=audio" in incoming["sdp"]
            # active-call's `headers`: the INVITE's headers beyond the base protocol's.
            assert incoming["headers"] == {
                "X-Customer-Id": "c-42",
                "P-Asserted-Identity": "<sip:+15550100@carrier.example>",
                "Diversion": "<sip:100@pbx.example>;reason=no-answer, <sip:200@pbx.example>;reason=busy",
            }
            assert "s3cr3t" not in str(incoming) and "t0ps3cr3t" not in str(incoming)
            await c.send({"command": "ringing"})
            assert await caller.phone.wait("ringing") is False
            await c.send({"command": "message", "body": "too early"})
            err = await c.event("error", sender="command")
            assert err["code"] == 409 and err["error"].startswith("message: the call is not connected")
            await c.send({"command": "accept", "option": {"recorder": {}}})
            answer = await c.event("answer")
            assert "m=audio" in answer["sdp"]
            await caller.phone.wait("answered")
            await c.send({"command": "message", "body": "welcome"})
            assert await caller.phone.wait("message") == ("welcome", "text/plain;charset=utf-8")
            await c.send({"command": "play", "url": str(wav)})
            await play_tone(leg, 440, 1.2)
            ready = await c.event("mediaReady")
            names = c.names()
            assert ready["trackId"] == dialog_id and names.index("answer") < names.index("mediaReady")
            await c.event("trackEnd", trackId="server-side-track", timeout=5)
            heard = caller.phone.heard()
            assert abs(peak_freq(heard[len(heard) // 3 :][:8000]) - 1000) < 30
            leg.hangup()
            hangup = await c.event("hangup")
            assert hangup["initiator"] == "caller" and hangup["reason"] == "bye"
            # The app's `ringing` is when it rang (active-call's ringingTime).
            times = [hangup[k] for k in ("startTime", "ringingTime", "answerTime", "hangupTime")]
            assert times == sorted(times)
        finally:
            await c.close()
    finally:
        await caller.close()
    assert not inbound.redis.exists(f"pbx:call:{dialog_id}")


async def test_reject_sends_the_code(inbound: StackInfo, webhook: Webhook) -> None:
    caller = Caller()
    try:
        await caller.call(inbound.sip_port)
        hook = await webhook.next()
        c = await CallClient.open(inbound.ws, "/call/sip", call_id=hook["dialogId"])
        try:
            await c.event("incoming")
            await c.send({"command": "reject", "reason": "Busy", "code": 486})
            assert await caller.phone.wait("failed") == 486
            await c.event("hangup")
        finally:
            await c.close()
    finally:
        await caller.close()


async def test_early_media_ringtone_then_cancel(inbound: StackInfo, webhook: Webhook, tmp_path: Path) -> None:
    ring = tmp_path / "ring.wav"
    write_wav(ring, tone(600, 3.0))
    caller = Caller()
    try:
        await caller.call(inbound.sip_port)
        hook = await webhook.next()
        # The socket that picks the call up names its server-side track (active-call's serverSideTrack).
        c = await CallClient.open(inbound.ws, "/call/sip", call_id=hook["dialogId"], serverSideTrack="tone")
        try:
            await c.event("incoming")
            await c.send({"command": "ringing", "ringtone": str(ring)})
            assert await caller.phone.wait("ringing") is True  # 183 with SDP
            await c.event("trackStart", trackId="tone")
            await asyncio.sleep(1.0)
            heard = caller.phone.heard()
            assert len(heard) > 8000 and abs(peak_freq(heard[-8000:]) - 600) < 30
            assert caller.leg is not None
            caller.leg.hangup()  # CANCEL
            hangup = await c.event("hangup", timeout=5)
            assert hangup["reason"] == "canceled" and hangup["initiator"] == "caller"
        finally:
            await c.close()
    finally:
        await caller.close()


async def test_unanswered_call_is_turned_away(inbound: StackInfo, webhook: Webhook) -> None:
    caller = Caller()
    try:
        await caller.call(inbound.sip_port)
        hook = await webhook.next()
        c = await CallClient.open(inbound.ws, "/call/sip", call_id=hook["dialogId"])
        try:
            await c.event("incoming")
            assert await caller.phone.wait("failed", timeout=6) == 480
            hangup = await c.event("hangup")
            assert hangup["reason"] == "no_answer"
        finally:
            await c.close()
    finally:
        await caller.close()


async def test_socket_closing_before_accept_declines(inbound: StackInfo, webhook: Webhook) -> None:
    caller = Caller()
    try:
        await caller.call(inbound.sip_port)
        hook = await webhook.next()
        c = await CallClient.open(inbound.ws, "/call/sip", call_id=hook["dialogId"])
        await c.event("incoming")
        await c.close()
        assert await caller.phone.wait("failed", timeout=5) == 603
    finally:
        await caller.close()


async def test_webhook_failure_rejects(inbound: StackInfo, webhook: Webhook) -> None:
    webhook.status = 500
    caller = Caller()
    try:
        await caller.call(inbound.sip_port)
        await webhook.next()
        assert await caller.phone.wait("failed", timeout=5) == 503
    finally:
        webhook.status = 200
        await caller.close()


async def test_no_webhook_configured_is_503(stack: StackInfo) -> None:
    caller = Caller()
    try:
        await caller.call(stack.sip_port)
        assert await caller.phone.wait("failed", timeout=5) == 503
    finally:
        await caller.close()


async def test_accept_without_pending_call_is_an_error(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
    try:
        await c.send({"command": "accept", "option": {}})
        err = await c.event("error")
        assert err["sender"] == "accept" and err["code"] == 400
        assert np.all([e.get("event") != "hangup" for e in c.events])
    finally:
        await c.close()
