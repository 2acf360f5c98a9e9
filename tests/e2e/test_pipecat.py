"""A real Pipecat bot (FastAPI WebSocket transport, TwilioFrameSerializer) serving calls through the server:
a WebSocket call, an inbound SIP call from SIPp and an outbound SIP call, over `mediaPass.dialect: "twilio"`.

The bot runs in its own process (tests/bots/pipecat_bot.py); it writes what it saw to a report per call.
Its times are wall-clock (`time.time()`), the call client's are monotonic: `WALL` converts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.audio_util import dtmf_tones, peak_freq, rms, tone
from tests.bots.pipecat_runner import PipecatBot, run_pipecat_bot
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, Webhook
from tests.e2e.sip_peer import play_tone, sip_peer
from tests.e2e.test_media_pass import frames_of
from tests.e2e.test_recorder import read_stereo, stream
from tests.e2e.test_sipp import answer_next
from tests.sip.sipp import Sipp

pytestmark = pytest.mark.e2e

WALL = time.time() - time.monotonic()


@pytest.fixture(scope="module")
def pipecat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipecatBot]:
    with run_pipecat_bot(tmp_path_factory.mktemp("pipecat")) as bot:
        yield bot


def option(bot: PipecatBot, **params: str) -> dict[str, object]:
    return {"mediaPass": {"url": bot.url, "dialect": "twilio"}, "extra": params}


def loud_times(c: CallClient, threshold: float = 1000) -> list[float]:
    """Wall-clock arrival of each loud frame the caller got."""
    return [t + WALL for t, f in c.frames if rms(np.frombuffer(f, "<i2")) > threshold]


async def test_websocket_call_tone_marks_in_order_and_clear_within_a_frame(
    stack: StackInfo, call_id: str, pipecat: PipecatBot
) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(**option(pipecat, mode="tone", freq="440", seconds="8", marks="3"))
        await c.event("trackStart", trackId="server-side-track")
        await pipecat.wait_event(call_id, "mark", timeout=5)
        deadline = time.monotonic() + 5
        while len(pipecat.events(call_id, "mark")) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # The caller presses 5: the bot interrupts itself, Pipecat's serializer sends `clear`.
        await stream(c, frames_of(dtmf_tones("5").astype(np.int16)))
        clear = await pipecat.wait_event(call_id, "clear_sent", timeout=3)
        await asyncio.sleep(0.5)
        await c.send({"command": "hangup"})
        await c.event("hangup")
        closed = await pipecat.wait_event(call_id, "closed", timeout=5)
    finally:
        await c.close()
    start = pipecat.events(call_id, "start")[0]["message"]["start"]
    assert start["callSid"] == call_id and start["customParameters"]["mode"] == "tone"
    loud = loud_times(c)
    first = loud[0]
    marks = pipecat.events(call_id, "mark")
    assert [m["name"] for m in marks] == ["m1", "m2", "m3"], "marks come back in order"
    for k, m in enumerate(marks, start=1):
        assert k - 0.1 < m["t"] - first < k + 0.3, f"m{k} returned once its audio had played"
    before = [t for t in loud if t < clear["t"]]
    played = np.frombuffer(b"".join(f for t, f in c.frames if t + WALL < clear["t"]), dtype="<i2")
    assert abs(peak_freq(played[-16000:]) - 440) < 10
    assert len(before) > 150, "the tone played in real time until the key press"
    after = [t for t in loud if t >= clear["t"]]
    assert len(after) <= 2, f"{len(after)} frames of tone after the bot's clear"
    assert all(t < clear["t"] + 0.1 for t in after)
    assert closed["by"] == "peer"
    assert [e["digit"] for e in pipecat.events(call_id, "dtmf")] == ["5"]
    assert [e["digit"] for e in c.events if e["event"] == "dtmf"] == ["5"], "the app sees the key too"


async def test_websocket_call_echo(stack: StackInfo, call_id: str, pipecat: PipecatBot) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(**option(pipecat, mode="echo"))
        sent = time.time()
        await stream(c, frames_of(tone(1000, 1.0, amp=0.3)))
        await c.event("trackEnd", trackId="server-side-track", timeout=3)
        await c.send({"command": "hangup"})
        await c.event("hangup")
        await pipecat.wait_event(call_id, "closed", timeout=5)
    finally:
        await c.close()
    loud = loud_times(c)
    assert 45 <= len(loud) <= 53, f"{len(loud)} frames of the echoed second"
    assert loud[0] - sent < 0.3, "the echo starts within a few frames"
    echoed = np.frombuffer(b"".join(f for _, f in c.frames), dtype="<i2")
    assert abs(peak_freq(echoed) - 1000) < 15
    heard = pipecat.heard(call_id)
    assert abs(peak_freq(heard, rate=8000) - 1000) < 15 and rms(heard) > 3000


async def test_sipp_call_served_by_the_pipecat_bot(
    inbound: StackInfo, webhook: Webhook, tmp_path: Path
) -> None:
    with run_pipecat_bot(tmp_path / "bot") as bot:
        uac = Sipp("uac_call", remote=("127.0.0.1", inbound.sip_port), variables={"hold_ms": 3000})
        async with uac:
            c, hook = await answer_next(inbound, webhook)
            call_id = str(hook["dialogId"])
            try:
                await c.send({"command": "accept", "option": {**option(bot, mode="echo"), "recorder": {}}})
                await c.event("answer")
                await c.event("trackStart", trackId="server-side-track", timeout=5)
                hangup = await c.event("hangup", timeout=10)
                assert hangup["initiator"] == "caller"
            finally:
                await c.close()
            result = await uac.wait(timeout=10)
        result.assert_ok()
        await bot.wait_event(call_id, "closed", timeout=5)
        assert bot.events(call_id, "stop"), "the bot got Twilio's stop"
        heard = bot.heard(call_id)
    assert len(heard) > 2 * 8000 and rms(heard) > 300, "the phone's speech reached the bot"
    _, left, right = read_stereo(inbound.recorder_path / f"{call_id}.wav")
    assert rms(right) > 0.3 * rms(left), "the bot's echo went back to the phone"
    # The echo is the caller's speech again, a few frames later.
    n = 16000 * 2
    lags = [int(np.dot(left[:n].astype(np.float64), np.roll(right[:n], -lag))) for lag in range(0, 3200, 80)]
    assert 0 < int(np.argmax(lags)) * 80 < 3200


async def test_outbound_sip_call_to_a_phone(stack: StackInfo, call_id: str, pipecat: PipecatBot) -> None:
    async with sip_peer() as peer:
        c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
        try:
            await c.send(
                {
                    "command": "invite",
                    "option": {"callee": peer.uri, **option(pipecat, mode="tone", freq="700", seconds="1.5")},
                }
            )
            await c.event("answer", timeout=10)
            leg, phone = await peer.leg()
            await play_tone(leg, 1000, 1.5)
            await c.event("trackEnd", trackId="server-side-track", timeout=3)
            heard = phone.heard()
            loud = np.flatnonzero(
                np.array([rms(heard[i : i + 320]) for i in range(0, len(heard) - 319, 320)]) > 1000
            )
            assert 65 <= len(loud) <= 80, f"{len(loud)} loud frames for the bot's 1.5 s"
            assert abs(peak_freq(heard[loud[0] * 320 :][:16000]) - 700) < 20
            await c.send({"command": "hangup"})
            await c.event("hangup")
            await pipecat.wait_event(call_id, "closed", timeout=5)
        finally:
            await c.close()
    bot_side = pipecat.heard(call_id)
    assert abs(peak_freq(bot_side, rate=8000) - 1000) < 20 and rms(bot_side) > 2000


async def test_bot_ending_the_conversation_hangs_up(
    stack: StackInfo, call_id: str, pipecat: PipecatBot
) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(**option(pipecat, mode="tone", seconds="1", end_after="0.5"))
        hangup = await c.event("hangup", timeout=6)
        assert hangup["reason"] == "bot_closed" and hangup["initiator"] == "system"
        assert "error" not in c.names()
    finally:
        await c.close()
    assert 45 <= len(loud_times(c)) <= 53, "the bot's last second was played before the hangup"
    assert pipecat.events(call_id, "closed")[0]["by"] == "bot"
