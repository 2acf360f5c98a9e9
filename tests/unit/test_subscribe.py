"""`option.subscribe` (worker/call/subscribe.py): each track's 20 ms frames as `[track byte][s16le PCM]`
messages to the app, 0 = the server-side track, 1 = the peer's; only on SIP and WebRTC calls, only when
asked for."""

from __future__ import annotations

import numpy as np
import pytest

from common import wire
from common.protocol import CallOption
from tests.audio_util import peak_freq, tone
from tests.unit.callfakes import FakeHost, fake_services
from worker.call.session import CallSession
from worker.call.subscribe import FRAME, PEER, SERVER_SIDE, AudioMirror


def read(message: bytes) -> tuple[int, np.ndarray]:
    assert len(message) == 1 + 2 * FRAME
    return message[0], np.frombuffer(message, dtype="<i2", offset=1)


def test_each_frame_is_one_message_led_by_its_track() -> None:
    sent: list[bytes] = []
    mirror = AudioMirror(sent.append)
    server, peer = tone(1000, 0.02), tone(440, 0.02)
    mirror.server_side(server)
    mirror.peer(peer)
    assert (SERVER_SIDE, PEER) == (0, 1)
    assert [read(m)[0] for m in sent] == [0, 1]
    assert np.array_equal(read(sent[0])[1], server) and np.array_equal(read(sent[1])[1], peer)
    assert sent[0][1:3] == int(server[0]).to_bytes(2, "little", signed=True), "little-endian"


def test_the_peers_other_packet_lengths_are_cut_into_20_ms_frames() -> None:
    sent: list[bytes] = []
    mirror = AudioMirror(sent.append)
    audio = tone(440, 0.3)  # 4800 samples, sent as 30 ms packets of 480
    for i in range(0, len(audio), 480):
        mirror.peer(audio[i : i + 480])
    assert len(sent) == len(audio) // FRAME == 15
    assert all(read(m)[0] == PEER for m in sent)
    assert np.array_equal(np.concatenate([read(m)[1] for m in sent]), audio)
    mirror.peer(audio[:100])  # a partial frame waits for the rest
    assert len(sent) == 15
    mirror.peer(audio[100:540])
    assert len(sent) == 16 and np.array_equal(read(sent[-1])[1], audio[:FRAME])


def session_for(call_type: str) -> tuple[CallSession, FakeHost]:
    host = FakeHost()
    session = CallSession(fake_services(), host, "c1", call_type, "web-1", False, 0)
    session.listener.feed = lambda pcm: None  # type: ignore[method-assign]  # no VAD or DTMF here
    return session, host


def mirrored(host: FakeHost) -> list[tuple[int, np.ndarray]]:
    return [read(m["b"]) for m in host.sent if m["k"] == wire.PCM]


@pytest.mark.parametrize("call_type", ["sip", "webrtc"])
async def test_a_subscribed_call_sends_both_tracks_to_the_socket(call_type: str) -> None:
    session, host = session_for(call_type)
    await session._prepare(CallOption(subscribe=True))
    caller, played = tone(440, 0.2), tone(1000, 0.2)
    frames = iter([played[i : i + FRAME] for i in range(0, len(played), FRAME)] + [None] * 3)
    session.tracks.tick = lambda: next(frames)  # type: ignore[method-assign]
    for i in range(0, len(caller), FRAME):
        session.caller_audio(caller[i : i + FRAME])
        session.tick()
    for _ in range(3):
        session.tick()  # nothing plays: no server-side frames
    got = mirrored(host)
    assert [t for t, _ in got] == [1, 0] * 10
    assert all(m["c"] == "c1" for m in host.sent if m["k"] == wire.PCM)
    server = np.concatenate([pcm for t, pcm in got if t == 0])
    peer = np.concatenate([pcm for t, pcm in got if t == 1])
    assert abs(peak_freq(server) - 1000) < 50 and abs(peak_freq(peer) - 440) < 50


@pytest.mark.parametrize(("call_type", "subscribe"), [("sip", None), ("sip", False), ("websocket", True)])
async def test_nothing_is_mirrored_unless_asked_for_on_a_sip_or_webrtc_call(
    call_type: str, subscribe: bool | None
) -> None:
    session, host = session_for(call_type)
    await session._prepare(CallOption(subscribe=subscribe))
    assert session.mirror is None
    session.tracks.tick = lambda: tone(1000, 0.02)  # type: ignore[method-assign]
    session.caller_audio(tone(440, 0.02))
    session.tick()
    sent = [m["b"] for m in host.sent if m["k"] == wire.PCM]
    # A WebSocket call sends what plays on its own socket, as ever (no track byte): nothing more.
    assert len(sent) == (1 if call_type == "websocket" else 0)
    assert all(len(m) == 2 * FRAME for m in sent)
