"""Outbound SIP calls, in-dialog requests and transfers over the real stack, against a scriptable SIP peer."""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from common.events import rfc3339
from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.sip_peer import play_tone, sip_peer
from tests.e2e.test_playback import write_wav
from worker.sip import sdp
from worker.sip.message import Request, Response, parse

pytestmark = pytest.mark.e2e


async def dial(stack: StackInfo, callee: str, call_id: str, **option: object) -> CallClient:
    c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
    await c.send(
        {"command": "invite", "option": {"callee": callee, "caller": "sip:bot@example.com", **option}}
    )
    return c


def caller_channel(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return data[0::2]


async def test_outbound_call_audio_both_ways_and_hangup(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.0))
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id, sip={"headers": {"X-Campaign": "42"}}, recorder={})
        try:
            answer = await c.event("answer", timeout=10)
            assert "m=audio" in answer["sdp"] and answer["trackId"] == call_id
            names = c.names()
            assert names.index("ringing") < names.index("trackStart") < names.index("answer")
            invite = peer.invites[0]
            assert invite.headers.get("X-Campaign") == "42"
            assert str(invite.from_.uri) == "sip:bot@example.com"
            leg, phone = await peer.leg()
            await c.send({"command": "play", "url": str(wav)})
            assert "mediaReady" not in c.names(), "the callee has sent no audio yet"
            await play_tone(leg, 440, 1.5)
            ready = await c.event("mediaReady")
            assert ready == {"event": "mediaReady", "trackId": call_id, "timestamp": ready["timestamp"]}
            await c.event("trackEnd", trackId="server-side-track", timeout=5)
            heard = phone.heard()
            loud = np.array([rms(heard[i : i + 320]) for i in range(0, len(heard) - 319, 320)]) > 1000
            assert 40 <= loud.sum() <= 55, f"{loud.sum()} loud frames for 1 s of tone"
            seg = heard[np.argmax(loud) * 320 :][:8000]
            assert abs(peak_freq(seg) - 1000) < 30
            await c.send({"command": "hangup"})
            hangup = await c.event("hangup", timeout=5)
            assert hangup["initiator"] == "caller"
            # The callee's first 18x is when it rang (active-call's ringingTime).
            times = [hangup[k] for k in ("startTime", "ringingTime", "answerTime", "hangupTime")]
            assert times == sorted(times)
            ringing = await c.event("ringing")
            assert hangup["ringingTime"] == rfc3339(ringing["timestamp"])
            assert await phone.wait("ended") == "bye"
            await c.wait_closed()
            assert c.names().count("mediaReady") == 1
        finally:
            await c.close()
    left = caller_channel(stack.recorder_path / f"{call_id}.wav")
    assert abs(peak_freq(left[len(left) // 4 : len(left) // 4 + 8000]) - 440) < 30


async def test_the_socket_carries_no_audio(stack: StackInfo, call_id: str) -> None:
    # The caller's audio is the SIP peer's RTP: a tone sent on the socket is refused once and never heard,
    # and `codec` (socket audio's format) is no reason to refuse the invite.
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id, codec="opus", recorder={})
        try:
            await c.event("answer", timeout=10)
            socket_tone = tone(440, 1.0)
            for i in range(0, len(socket_tone), 320):
                await c.ws.send_bytes(socket_tone[i : i + 320].tobytes())
                await asyncio.sleep(0.02)
            err = await c.event("error", sender="audio")
            assert err["code"] == 400 and "RTP" in err["error"] and err["trackId"] == call_id
            await c.send({"command": "hangup"})
            await c.event("hangup", timeout=5)
            await c.wait_closed()
        finally:
            await c.close()
    left = caller_channel(stack.recorder_path / f"{call_id}.wav")
    assert len(left) > 8000 and rms(left) < 100, "the socket's tone is not the caller's audio"
    assert [e["sender"] for e in c.events if e["event"] == "error"] == ["audio"], "told once"


def subscribed(frames: list[tuple[float, bytes]]) -> dict[int, np.ndarray]:
    """The audio of `option.subscribe`'s messages, by track byte; each message one 20 ms frame."""
    by_track: dict[int, list[np.ndarray]] = {}
    for _, m in frames:
        assert len(m) == 641, f"a {len(m)}-byte message: one track byte and 320 samples expected"
        by_track.setdefault(m[0], []).append(np.frombuffer(m, dtype="<i2", offset=1))
    return {track: np.concatenate(chunks) for track, chunks in by_track.items()}


async def test_subscribe_mirrors_both_tracks_to_the_socket(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    """Track 0 carries what the server plays to the callee (a 1 kHz file), track 1 what the callee sends
    (440 Hz): both as 16 kHz PCM, in real time, one message per 20 ms frame."""
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.0))
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id, subscribe=True)
        try:
            await c.event("answer", timeout=10)
            leg, phone = await peer.leg()
            await c.send({"command": "play", "url": str(wav)})
            await play_tone(leg, 440, 1.5)
            await c.event("trackEnd", trackId="server-side-track", timeout=5)
            await asyncio.sleep(0.3)
            tracks = subscribed(c.frames)
            assert sorted(tracks) == [0, 1]
            server, callee = tracks[0], tracks[1]
            # Track 0 exists only while the file plays: its second, give or take a frame or two.
            assert abs(len(server) / 16000 - 1.0) <= 0.06, (
                f"{len(server) / 16000:.2f} s of the server's track"
            )
            assert abs(peak_freq(server[1600:-1600]) - 1000) < 15
            loud = [i for i in range(0, len(callee) - 319, 320) if rms(callee[i : i + 320]) > 1000]
            assert 1.3 <= len(loud) * 0.02 <= 1.6, "the callee's 1.5 s tone"
            assert abs(peak_freq(callee[loud[5] : loud[-5]]) - 440) < 15
            # The callee hears the server's track as mirrored.
            heard = phone.heard()
            assert abs(peak_freq(heard[len(heard) // 3 :][:8000]) - 1000) < 30
        finally:
            await c.close()


async def test_play_sent_while_it_rings_waits_for_the_answer(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    """`play` needs the answer: sent while the callee rings, it starts once the call is answered and is heard
    whole; a command sent after it (even one that needs no answer) keeps its place behind it."""
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.0))
    async with sip_peer(ring_for=1.0) as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("ringing", timeout=5)
            await c.send({"command": "play", "url": str(wav)})
            await c.send({"command": "history", "speaker": "user", "text": "after the play"})
            await c.event("trackEnd", trackId="server-side-track", timeout=8)
            order = [(e["event"], e.get("trackId")) for e in c.events]
            answered = order.index(("answer", call_id))
            started = order.index(("trackStart", "server-side-track"))
            assert answered < started < order.index(("addHistory", None)), order
            _, phone = await peer.leg()
            heard = phone.heard()
            loud = np.array([rms(heard[i : i + 320]) for i in range(0, len(heard) - 319, 320)]) > 1000
            assert 40 <= loud.sum() <= 55, f"{loud.sum()} loud frames for 1 s of tone"
            await c.send({"command": "hangup"})
            await c.event("hangup", timeout=5)
        finally:
            await c.close()


async def test_rejected_call(stack: StackInfo, call_id: str) -> None:
    async with sip_peer(reject=486) as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            reject = await c.event("reject", timeout=10)
            assert reject["code"] == 486 and reject["reason"] == "Busy Here"
            hangup = await c.event("hangup")
            assert hangup["reason"] == "rejected" and "answer" not in c.names()
        finally:
            await c.close()


async def test_remote_bye_ends_the_call(stack: StackInfo, call_id: str) -> None:
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("answer", timeout=10)
            leg, _ = await peer.leg()
            leg.hangup()
            hangup = await c.event("hangup", timeout=5)
            assert hangup["initiator"] == "callee" and hangup["reason"] == "bye"
            names = c.names()
            assert names.index("trackEnd") < names.index("hangup")
        finally:
            await c.close()


async def test_no_answer_is_cancelled(stack: StackInfo, call_id: str) -> None:
    async with sip_peer(answer=False) as peer:
        sip = {"username": "bot", "password": "s3cret-pw", "realm": "example.com"}
        c = await dial(stack, peer.uri, call_id, handshakeTimeout="2s", sip=sip)
        try:
            await c.event("ringing", timeout=5)
            async with aiohttp.ClientSession() as http, http.get(f"{stack.base}/call/lists") as resp:
                listing = await resp.text()
            assert call_id in listing and "s3cret-pw" not in listing and '"***"' in listing
            reject = await c.event("reject", timeout=6)
            assert reject["code"] == 408
            _, phone = await peer.leg()
            assert await phone.wait("ended") == "canceled"
            await c.wait_closed()
        finally:
            await c.close()
    assert "s3cret-pw" not in (stack.recorder_path / f"{call_id}.events.jsonl").read_text()


async def test_unreachable_callee_and_bad_uri(stack: StackInfo, call_id: str) -> None:
    c = await dial(stack, "not a uri", call_id)
    try:
        err = await c.event("error", timeout=5)
        assert err["sender"] == "invite" and err["code"] == 400
        await c.event("hangup")
    finally:
        await c.close()


def _info(template: Request, digit: str, cseq: int, port: int) -> bytes:
    """An in-dialog INFO like the peer would send, from another socket (another source port)."""
    h = template.headers.copy()
    h.remove("Via")
    h.prepend("Via", f"SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bKfwd{cseq}")
    h.set("CSeq", f"{cseq} INFO")
    h.remove("Content-Type")
    h.add("Content-Type", "application/dtmf-relay")
    return Request("INFO", template.uri, h, f"Signal={digit}\r\nDuration=160\r\n".encode()).serialize()


async def test_info_dtmf_reaches_the_owner_from_any_process(stack: StackInfo, call_id: str) -> None:
    """INFOs sent to the shared SIP port from many source ports land on both media processes; the one
    that does not own the dialog forwards them through Redis, so every one is answered 200 and reported."""
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("answer", timeout=10)
            leg, _ = await peer.leg()
            assert leg.dialog is not None
            template = leg.dialog.request("INFO", leg.contact)
            digits = "1234567890" * 2
            loop = asyncio.get_running_loop()
            for i, digit in enumerate(digits):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", 0))
                    s.setblocking(False)
                    data = _info(template, digit, 100 + i, s.getsockname()[1])
                    seen = len(c.events)
                    s.sendto(data, ("127.0.0.1", stack.sip_port))
                    reply = await asyncio.wait_for(loop.sock_recv(s, 4096), 3)
                resp = parse(reply)
                assert isinstance(resp, Response) and resp.status == 200, reply[:80]
                await c.event("dtmf", digit=digit, after=seen, timeout=3)
            got = [e["digit"] for e in c.events if e.get("event") == "dtmf"]
            assert got == list(digits)
        finally:
            await c.close()


async def test_reinvite_hold_and_unhold(stack: StackInfo, call_id: str) -> None:
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("answer", timeout=10)
            leg, _ = await peer.leg()
            assert leg.rtp is not None
            steps = (("sendonly", "recvonly"), ("sendonly", "recvonly"), ("sendrecv", "sendrecv"))
            for direction, expect in steps:
                offer = sdp.offer("127.0.0.1", leg.rtp.local_port, ("PCMU",), direction=direction)  # type: ignore[arg-type]
                final = leg._send_in_dialog("INVITE", offer.encode(), "application/sdp")
                assert final is not None
                resp = await asyncio.wait_for(final, 5)
                assert resp.status == 200
                assert f"a={expect}" in resp.body.decode()
                assert "PCMU" in resp.body.decode()
            await c.event("hold", onHold=False, timeout=5)
            holds = [e["onHold"] for e in c.events if e["event"] == "hold"]
            assert holds == [True, False], "one event per change"
        finally:
            await c.close()


async def test_the_callee_sends_a_message(stack: StackInfo, call_id: str) -> None:
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("answer", timeout=10)
            leg, _ = await peer.leg()
            resp = await asyncio.wait_for(leg.message('{"ok": true}', "application/json"), 5)
            assert resp.status == 200
            message = await c.event("message", timeout=5)
            assert message["body"] == '{"ok": true}' and message["contentType"] == "application/json"
            assert message["trackId"] == call_id and "refer" not in message
        finally:
            await c.close()


async def test_bridged_transfer_of_a_websocket_call(stack: StackInfo, call_id: str) -> None:
    async with sip_peer(ring_for=0.5) as agent:
        c = await CallClient.open(stack.ws, "/call", call_id=call_id)
        try:
            await c.invite()
            await c.send({"command": "refer", "target": agent.uri, "options": {"timeout": 5}})
            ringing = await c.event("ringing", timeout=5, refer=True)
            assert ringing["trackId"] == "server-side-track"
            answer = await c.event("answer", timeout=5, refer=True)
            assert answer["trackId"] == "server-side-track"
            assert agent.invites[0].headers.get("X-Referred-Id") == call_id
            leg, phone = await agent.leg()
            frames_before = len(c.frames)
            caller_tone = tone(1000, 1.5)

            async def caller_speaks() -> None:
                for i in range(0, len(caller_tone) - 319, 320):
                    await c.ws.send_bytes(caller_tone[i : i + 320].tobytes())
                    await asyncio.sleep(0.02)

            await asyncio.gather(caller_speaks(), play_tone(leg, 440, 1.5))
            got = np.frombuffer(b"".join(f for _, f in c.frames[frames_before:]), dtype=np.int16)
            assert abs(peak_freq(got[len(got) // 3 :][:8000]) - 440) < 30
            heard = phone.heard()
            assert abs(peak_freq(heard[len(heard) // 3 :][:8000]) - 1000) < 30
            # The new leg's in-dialog requests are reported as the transfer's (refer: true).
            assert (await asyncio.wait_for(leg.message("from the agent", "text/plain"), 5)).status == 200
            message = await c.event("message", refer=True, timeout=5)
            assert message["trackId"] == "server-side-track" and message["body"] == "from the agent"
            leg.hangup()
            leg_hangup = await c.event("hangup", timeout=5, refer=True)
            assert leg_hangup["trackId"] == "server-side-track"
            final = await c.event("hangup", timeout=5, reason="refer")
            assert final["trackId"] == call_id
        finally:
            await c.close()


async def test_the_app_hangs_up_the_transfer_leg_alone(stack: StackInfo, call_id: str) -> None:
    async with sip_peer() as agent:
        c = await CallClient.open(stack.ws, "/call", call_id=call_id)
        try:
            await c.invite()
            await c.send({"command": "hangup", "refer": True})
            refused = await c.event("error", timeout=5)
            assert refused["sender"] == "hangup" and refused["code"] == 409, "no transfer yet"
            await c.send({"command": "refer", "target": agent.uri, "options": {"timeout": 5}})
            await c.event("answer", timeout=5, refer=True)
            _, phone = await agent.leg()
            await c.send({"command": "hangup", "refer": True, "reason": "agent_done"})
            leg_hangup = await c.event("hangup", timeout=5, refer=True)
            assert leg_hangup["reason"] == "agent_done" and leg_hangup["trackId"] == "server-side-track"
            assert await phone.wait("ended", timeout=5) is not None, "the agent got its BYE"
            await c.send({"command": "history", "speaker": "user", "text": "still here"})
            await c.event("addHistory", timeout=3)
            assert [e for e in c.events if e["event"] == "hangup"] == [leg_hangup], "the call goes on"
        finally:
            await c.close()


async def test_transfer_to_nobody_times_out_and_the_call_goes_on(stack: StackInfo, call_id: str) -> None:
    async with sip_peer(answer=False) as agent:
        c = await CallClient.open(stack.ws, "/call", call_id=call_id)
        try:
            await c.invite()
            await c.send({"command": "refer", "callee": agent.uri, "options": {"timeout": 1}})
            reject = await c.event("reject", timeout=5, refer=True)
            assert reject["code"] == 408 and reject["reason"] == "Timeout when refer"
            await c.send({"command": "history", "speaker": "user", "text": "still here"})
            await c.event("addHistory", timeout=3)
            assert "hangup" not in c.names()
        finally:
            await c.close()


async def test_bypass_refer_sends_refer_to_the_peer(stack: StackInfo, call_id: str) -> None:
    async with sip_peer() as peer:
        c = await dial(stack, peer.uri, call_id)
        try:
            await c.event("answer", timeout=10)
            _, phone = await peer.leg()
            await c.send({"command": "refer", "target": "sip:agent@127.0.0.1", "options": {"bypass": True}})
            assert await phone.wait("refer") == "<sip:agent@127.0.0.1>"
            await c.event("ringing", refer=True, timeout=5)
        finally:
            await c.close()


async def test_message_and_hangup_headers_on_a_websocket_call(stack: StackInfo, call_id: str) -> None:
    """active-call's answer to `message` off SIP; `hangup.headers` have no BYE to go on and are ignored."""
    c = await CallClient.open(stack.ws, "/call", call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "message", "body": "hi"})
        err = await c.event("error", timeout=5)
        assert err == {
            "event": "error",
            "timestamp": err["timestamp"],
            "trackId": call_id,
            "sender": "command",
            "error": "message command is only supported for SIP calls",
            "code": 400,
        }
        await c.send({"command": "hangup", "headers": {"X-Reason": "done"}})
        hangup = await c.event("hangup", timeout=5)
        assert hangup["reason"] == "normal_clearing"
    finally:
        await c.close()
