"""WebRTC calls over the real stack, with an aiortc peer in the test process as the caller."""

from __future__ import annotations

import asyncio
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.rtc_client import RtcCaller
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e


def loud_span(audio: np.ndarray, threshold: float = 1500) -> tuple[int, int]:
    """First and last sample of the part of `audio` louder than `threshold` (20 ms windows)."""
    windows = [rms(audio[i : i + 320]) > threshold for i in range(0, len(audio) - 319, 320)]
    loud = [i for i, w in enumerate(windows) if w]
    return (loud[0] * 320, (loud[-1] + 1) * 320) if loud else (0, 0)


async def call(c: CallClient, peer: RtcCaller, **option: object) -> dict[str, object]:
    offer = option.pop("offer", None) or await peer.offer()
    await c.send({"command": "invite", "option": {"offer": offer, **option}})
    answer = await c.event("answer", timeout=10)
    await peer.accept(str(answer["sdp"]))
    return answer


def recording(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 16000)
        both = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return both[0::2], both[1::2]


@pytest.mark.parametrize("codec", ["opus", "g722", "pcma", "pcmu"])
async def test_audio_both_ways_in_each_codec(
    stack: StackInfo, call_id: str, tmp_path: Path, codec: str
) -> None:
    beep = write_wav(tmp_path / "beep.wav", tone(1000, 1.0))
    peer = RtcCaller(freq=440, seconds=1.5)
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        answer = await call(c, peer, offer=await peer.offer(codec=codec), recorder={})
        sdp = str(answer["sdp"])
        assert sdp.startswith("v=0") and "a=candidate" in sdp and "telephone-event" in sdp
        media = [line for line in sdp.splitlines() if line.startswith("m=audio")][0]
        assert len(media.split()) == 5, f"one codec and telephone-event: {media}"
        names = [e["event"] for e in c.events]
        assert names[:2] == ["trackStart", "answer"]
        # The peer's tone arrives once ICE and DTLS are up: active-call's mediaReady, after the answer.
        ready = await c.event("mediaReady", timeout=5)
        assert ready == {"event": "mediaReady", "trackId": call_id, "timestamp": ready["timestamp"]}
        assert 0 <= ready["timestamp"] - answer["timestamp"] < 5000  # type: ignore[operator]
        await asyncio.sleep(1.0)
        mark = time.monotonic()
        await c.send({"command": "play", "url": str(beep), "playId": "beep"})
        await c.event("trackEnd", playId="beep", timeout=5)
        await asyncio.sleep(0.5)
        heard = peer.audio(after=mark)
        start, end = loud_span(heard)
        assert abs((end - start) / 16000 - 1.0) < 0.1, f"{codec}: the file's second, heard in real time"
        assert abs(peak_freq(heard[start + 1600 : end - 1600]) - 1000) < 15
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await peer.close()
        await c.close()
    assert c.names().count("mediaReady") == 1
    left, _right = recording(stack.recorder_path / f"{call_id}.wav")
    start, end = loud_span(left)
    assert end - start > 16000, f"{codec}: the caller's tone is in the recording"
    assert abs(peak_freq(left[start + 1600 : end - 1600]) - 440) < 15


async def test_subscribe_mirrors_both_tracks_to_the_socket(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    """`option.subscribe` on a WebRTC call: track 0 the server's 1 kHz file, track 1 the browser's 440 Hz
    microphone, as [track byte][16 kHz s16le] messages of one 20 ms frame."""
    beep = write_wav(tmp_path / "beep.wav", tone(1000, 1.0))
    peer = RtcCaller(freq=440, seconds=1.5)
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        await call(c, peer, subscribe=True)
        await c.send({"command": "play", "url": str(beep), "playId": "beep"})
        await c.event("trackEnd", playId="beep", timeout=5)
        await asyncio.sleep(1.0)
        by_track: dict[int, list[np.ndarray]] = {}
        for _, m in c.frames:
            assert len(m) == 641
            by_track.setdefault(m[0], []).append(np.frombuffer(m, dtype="<i2", offset=1))
        assert sorted(by_track) == [0, 1]
        server, browser = np.concatenate(by_track[0]), np.concatenate(by_track[1])
        assert abs(len(server) / 16000 - 1.0) <= 0.06
        assert abs(peak_freq(server[1600:-1600]) - 1000) < 15
        start, end = loud_span(browser)
        assert end - start > 16000, "the browser's tone"
        assert abs(peak_freq(browser[start + 1600 : end - 1600]) - 440) < 15
    finally:
        await peer.close()
        await c.close()


async def test_best_codec_of_the_offer_and_dtmf(stack: StackInfo, call_id: str) -> None:
    peer = RtcCaller()
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        answer = await call(c, peer)
        sdp = str(answer["sdp"])
        assert "opus/48000" in sdp and "PCMU" not in sdp and "G722" not in sdp
        assert "a=rtpmap:101 telephone-event" in sdp
        await asyncio.sleep(0.5)
        await peer.press("15#A")
        for digit in "15#A":
            await c.event("dtmf", digit=digit, timeout=3)
        await asyncio.sleep(0.3)
        assert [e["digit"] for e in c.events if e["event"] == "dtmf"] == list("15#A"), "one event a key"
    finally:
        await peer.close()
        await c.close()


async def test_the_socket_carries_no_audio(stack: StackInfo, call_id: str) -> None:
    # `codec` names the socket's audio format; a WebRTC call's is negotiated, so any value is ignored.
    peer = RtcCaller()
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        answer = await call(c, peer, codec="opus")
        assert "opus/48000" in str(answer["sdp"])
        assert [e["event"] for e in c.events if e["event"] == "error"] == []
        for _ in range(3):
            await c.ws.send_bytes(bytes(640))
        err = await c.event("error", sender="audio")
        assert err["code"] == 400 and "peer connection" in err["error"]
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await peer.close()
        await c.close()
    assert len([e for e in c.events if e["event"] == "error"]) == 1, "told once"


async def test_trickled_candidates_and_bad_ones(stack: StackInfo, call_id: str) -> None:
    peer = RtcCaller()
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        offer = await peer.offer(candidates=False)
        lines = peer.candidates()
        await c.send({"command": "candidate", "candidates": lines[:1]})  # before the invite: kept
        await c.send({"command": "invite", "option": {"offer": offer}})
        for line in lines[1:]:
            await c.send({"command": "addIceCandidate", "candidate": line, "sdpMid": "0", "sdpMLineIndex": 0})
        answer = await c.event("answer", timeout=10)
        await peer.accept(str(answer["sdp"]))
        await c.send({"command": "candidate", "candidates": ["candidate:garbage"]})
        err = await c.event("error", sender="candidate")
        assert err["code"] == 400
        for _ in range(100):
            if peer.pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert peer.pc.connectionState == "connected"
        assert [e for e in c.events if e["event"] == "error"] == [err]
    finally:
        await peer.close()
        await c.close()


async def test_peer_closing_or_vanishing_ends_the_call(stack: StackInfo, call_id: str) -> None:
    for how in ("close", "vanish"):
        peer = RtcCaller()
        c = await CallClient.open(stack.ws, "/call/webrtc", call_id=f"{call_id}-{how}")
        try:
            await call(c, peer)
            await asyncio.sleep(0.5)
            t = time.monotonic()
            if how == "close":
                await peer.close()
            else:
                await peer.vanish()
            hangup = await c.event("hangup", timeout=8)
            took = time.monotonic() - t
            names = c.names()
            assert names.index("trackEnd") < names.index("hangup")
            if how == "close":
                assert hangup["reason"] == "connection_closed" and took < 3
            else:
                assert hangup["reason"] == "media_timeout" and 2.5 < took < 6  # RTC_MEDIA_TIMEOUT=3
            await c.wait_closed()
        finally:
            await peer.close()
            await c.close()


async def test_bad_offers(stack: StackInfo, call_id: str) -> None:
    for n, (option, code) in enumerate(
        [({}, 400), ({"offer": "not sdp at all"}, 400), ({"offer": VIDEO_ONLY}, 488)]
    ):
        c = await CallClient.open(stack.ws, "/call/webrtc", call_id=f"{call_id}-{n}")
        try:
            await c.send({"command": "invite", "option": option})
            err = await c.event("error", sender="invite")
            assert err["code"] == code, err
            hangup = await c.event("hangup")
            assert hangup["reason"] == "failed"
        finally:
            await c.close()


VIDEO_ONLY = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=mid:0\r\n"
)


@pytest.fixture(scope="module")
def stun_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A stack whose ICE server never answers (a UDP port that swallows everything)."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    stun = f'[{{"urls": ["stun:127.0.0.1:{hole.getsockname()[1]}"]}}]'
    try:
        with running_stack(tmp_path_factory.mktemp("stun"), 1, 1, ICE_SERVERS=stun) as info:
            yield info
    finally:
        hole.close()


@pytest.mark.parametrize("timeout", ["1s", "1", 1])
async def test_handshake_timeout_bounds_ice_gathering(
    stun_stack: StackInfo, call_id: str, timeout: object
) -> None:
    peer = RtcCaller()
    c = await CallClient.open(stun_stack.ws, "/call/webrtc", call_id=call_id)
    try:
        t = time.monotonic()
        await c.send(
            {"command": "invite", "option": {"offer": await peer.offer(), "handshakeTimeout": timeout}}
        )
        err = await c.event("error", sender="invite", timeout=5)
        assert err["code"] == 408 and "handshake" in str(err["error"])
        assert 0.9 < time.monotonic() - t < 2.5
        assert (await c.event("hangup"))["reason"] == "failed"
    finally:
        await peer.close()
        await c.close()


async def test_commands_go_on_while_ice_gathers_and_hangup_ends_it(
    stun_stack: StackInfo, call_id: str
) -> None:
    """The answer waits for ICE gathering (here: for a STUN server that never answers, up to 30 s);
    commands that need no answer run meanwhile, and hangup ends the call at once."""
    peer = RtcCaller()
    c = await CallClient.open(stun_stack.ws, "/call/webrtc", call_id=call_id)
    try:
        offer = await peer.offer()
        await c.send({"command": "invite", "option": {"offer": offer, "handshakeTimeout": 30}})
        await c.send({"command": "addIceCandidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"})
        await c.send({"command": "history", "speaker": "user", "text": "still gathering"})
        await c.event("addHistory", timeout=2.0)
        sent = time.monotonic()
        await c.send({"command": "hangup"})
        await c.event("hangup", timeout=5)
        took = time.monotonic() - sent
        assert "answer" not in c.names() and "error" not in c.names(), c.events
        assert took <= 1.0, f"hangup event {took:.2f} s after the command"
        await c.wait_closed()
    finally:
        await peer.close()
        await c.close()
