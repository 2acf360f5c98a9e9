"""The Pipecat bot on its own: this test plays Twilio (Media Streams over an aiohttp WebSocket) to it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.bots.pipecat_runner import PipecatBot, pipecat_bot, run_pipecat_bot
from worker.media.g711 import ulaw_decode, ulaw_encode

RATE = 8000
CHUNK = 160  # μ-law bytes in 20 ms


class FakeTwilio:
    """Twilio's side of one Media Streams call: sends what Twilio sends, keeps what the bot sends back.

    Marks are echoed at once: the bot paces its audio in real time, so what precedes a mark has played.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, call_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = f"MZ{call_sid}"
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._seq = 0
        self._rx = asyncio.create_task(self._receive(), name=f"twilio:{call_sid}:rx")

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.received.append((time.monotonic(), data))
            if data.get("event") == "mark":
                await self.send("mark", mark=data["mark"])

    async def send(self, event: str, **fields: Any) -> float:
        self._seq += 1
        message = {"event": event, "sequenceNumber": str(self._seq), "streamSid": self.stream_sid, **fields}
        await self.ws.send_str(json.dumps(message))
        return time.monotonic()

    async def start(self, **params: str) -> None:
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "accountSid": "ACtest",
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
        }
        await self.send("start", start=start)

    async def play(self, ulaw: bytes) -> None:
        """Send μ-law audio as 20 ms media events, paced in real time."""
        began = time.monotonic()
        for index, offset in enumerate(range(0, len(ulaw), CHUNK)):
            payload = base64.b64encode(ulaw[offset : offset + CHUNK]).decode()
            await self.send(
                "media",
                media={
                    "track": "inbound",
                    "chunk": str(index + 1),
                    "timestamp": str(index * 20),
                    "payload": payload,
                },
            )
            await asyncio.sleep(max(0.0, began + (index + 1) * 0.02 - time.monotonic()))

    async def dtmf(self, digit: str) -> float:
        return await self.send("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    def events(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m.get("event") == name]

    def media_bytes(self, messages: list[tuple[float, dict[str, Any]]] | None = None) -> bytes:
        picked = self.received if messages is None else messages
        return b"".join(
            base64.b64decode(m["media"]["payload"]) for _, m in picked if m.get("event") == "media"
        )

    async def wait_for(self, check: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := check()):
            assert time.monotonic() < deadline, f"{self.call_sid}: timed out; got {self.summary()}"
            await asyncio.sleep(0.01)
        return found

    def summary(self) -> list[str]:
        return [m["event"] for _, m in self.received if m.get("event") != "media"]

    async def hang_up(self) -> None:
        """Twilio's end of a stream: `stop`, then the socket closes."""
        if not self.ws.closed:
            await self.send("stop", stop={"accountSid": "ACtest", "callSid": self.call_sid})
            await self.ws.close()
        await self._rx


@contextlib.asynccontextmanager
async def twilio_call(bot: PipecatBot, call_sid: str, **params: str) -> AsyncIterator[FakeTwilio]:
    async with aiohttp.ClientSession() as session, session.ws_connect(bot.url) as ws:
        call = FakeTwilio(ws, call_sid)
        await call.start(**params)
        try:
            yield call
        finally:
            await call.hang_up()


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipecatBot]:
    with run_pipecat_bot(tmp_path_factory.mktemp("pipecat")) as running:
        yield running


def events(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines]


async def echo_call(bot: PipecatBot) -> None:
    sent = ulaw_encode(tone(1000, 1.0, rate=RATE, amp=0.5))
    async with twilio_call(bot, "CAecho", mode="echo") as call:
        await call.play(sent[: len(sent) // 2])
        await call.dtmf("1")  # not the clear digit: reported, nothing else
        await call.play(sent[len(sent) // 2 :])
        await call.wait_for(lambda: len(call.media_bytes()) >= len(sent), timeout=2.0)
    back = call.media_bytes()
    assert back == sent, "echo must return the caller's audio unchanged"
    assert abs(peak_freq(ulaw_decode(back), RATE) - 1000) < 5
    assert not call.events("clear")

    closed = await bot.wait_event("CAecho", "closed")
    lines = bot.report("CAecho")
    assert events(lines) == ["start", "dtmf", "stop", "closed"]
    assert lines[0]["message"]["start"]["customParameters"] == {"mode": "echo"}
    assert lines[1]["digit"] == "1"
    assert closed["by"] == "peer" and closed["media_in"] == closed["media_out"] == len(sent) // CHUNK
    heard = bot.heard("CAecho")
    assert len(heard) == len(sent)
    assert abs(peak_freq(heard, RATE) - 1000) < 5 and rms(heard) > 8000


async def tone_call(bot: PipecatBot) -> None:
    async with twilio_call(bot, "CAtone", mode="tone", seconds="4", marks="2", freq="440") as call:
        await call.wait_for(lambda: len(call.events("mark")) == 2, timeout=4.0)
        await asyncio.sleep(0.5)
        dtmf_at = await call.dtmf("5")
        clear_at, _ = await call.wait_for(lambda: next(iter(call.events("clear")), None), timeout=1.0)
        await asyncio.sleep(0.5)  # the rest of the tone must stay unsent

    media = call.events("media")
    first = media[0][0]
    (m1_at, m1), (m2_at, m2) = call.events("mark")
    assert [m1["mark"]["name"], m2["mark"]["name"]] == ["m1", "m2"]
    assert all(m["streamSid"] == call.stream_sid for _, m in call.received)
    # Each mark follows exactly its second of audio (50 packets of 20 ms), at about that time.
    assert [sum(1 for t, _ in media if t < m_at) for m_at in (m1_at, m2_at)] == [50, 100]
    assert 0.8 < m1_at - first < 1.3 and 1.8 < m2_at - first < 2.3

    before = [(t, m) for t, m in media if t <= clear_at]
    assert len(media) - len(before) <= 1, "no media after clear (a packet already in flight at most)"
    assert 115 <= len(before) <= 145, "about 2.5 s of tone before the clear digit"
    pcm = ulaw_decode(call.media_bytes(before))
    assert abs(peak_freq(pcm, RATE) - 440) < 5
    assert 5000 < rms(pcm) < 6500  # amplitude 8000: rms 8000/√2
    assert clear_at - dtmf_at < 0.25

    await bot.wait_event("CAtone", "closed")
    lines = bot.report("CAtone")
    assert events(lines) == [
        "start", "mark_sent", "mark", "mark_sent", "mark", "dtmf", "interrupt", "clear_sent", "stop", "closed"
    ]  # fmt: skip
    by_event = {line["event"]: line for line in lines}
    assert [line["name"] for line in lines if line["event"] == "mark"] == ["m1", "m2"]
    assert [line["media_out"] for line in lines if line["event"] == "mark_sent"] == [50, 100]
    assert by_event["clear_sent"]["t"] - by_event["interrupt"]["t"] < 0.05
    assert len(bot.heard("CAtone")) == 0


async def test_echo_and_tone_calls_at_once(bot: PipecatBot) -> None:
    await asyncio.gather(echo_call(bot), tone_call(bot))


async def test_end_after_closes_the_socket_normally(bot: PipecatBot) -> None:
    async with twilio_call(bot, "CAend", mode="echo", end_after="1") as call:
        began = time.monotonic()
        audio = ulaw_encode(tone(700, 3.0, rate=RATE))
        player = asyncio.create_task(call.play(audio), name="twilio:CAend:tx")
        await call.wait_for(lambda: call.ws.closed, timeout=3.0)
        took = time.monotonic() - began
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await player
    assert call.ws.close_code == 1000
    assert 0.9 < took < 1.8
    closed = await bot.wait_event("CAend", "closed")
    assert events(bot.report("CAend")) == ["start", "end", "closed"]
    assert (closed["by"], closed["code"]) == ("bot", 1000)
    assert abs(peak_freq(bot.heard("CAend"), RATE) - 700) < 5


async def test_sigterm_stops_the_bot_fast_with_a_call_up(tmp_path: Path) -> None:
    async with pipecat_bot(tmp_path) as bot:
        async with aiohttp.ClientSession() as session, session.ws_connect(bot.url) as ws:
            call = FakeTwilio(ws, "CAterm")
            await call.start(mode="tone", seconds="10")
            await call.wait_for(lambda: call.events("media"))
            took = await asyncio.to_thread(bot.stop)
            await call.wait_for(lambda: ws.closed, timeout=2.0)
            await call.hang_up()
        assert took < 2.0
        assert bot.process.returncode == 0
        assert ws.close_code == 1012
        closed = await bot.wait_event("CAterm", "closed")
        assert closed["code"] == 1012
