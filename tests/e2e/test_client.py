"""pbxclient against the real stack: a `/call` with `tts` and its audio, `play`, `interrupt`, `hangup` with
typed events in order, the REST routes (both flavors' lists, kill, `/events`, `/command`), typed `error`
events, drops surfacing as `CallClosed`, resumption with `reconnect()`, a WebRTC call through the aiortc
helper, and SIP calls both ways (outbound to a scripted phone, inbound through the webhook receiver and
`attach`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import numpy as np
import pytest

from common.embedded import free_port
from pbxclient import (
    AddHistory,
    Answer,
    CallClosed,
    CallNotFound,
    CallOption,
    Client,
    Error,
    Event,
    Hangup,
    Incoming,
    Interruption,
    MediaReady,
    ResumeOption,
    TrackEnd,
    TrackStart,
    WebhookReceiver,
    rms,
)
from pbxclient.commands import History
from pbxclient.rtc import RtcPeer
from tests.audio_util import peak_freq, tone
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.sip_peer import play_tone, sip_peer
from tests.e2e.test_playback import write_wav
from tests.e2e.test_sip_inbound import Caller
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e

LONG = "This sentence is long enough to still be playing when the client does something about it, and more."


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def in_order(seen: list[str], expected: list[str]) -> bool:
    """Whether `expected` occurs in `seen` in this order (other events may come between)."""
    it = iter(seen)
    return all(name in it for name in expected)


async def test_tts_audio_and_hangup_with_typed_events_in_order(stack: StackInfo, call_id: str) -> None:
    async with Client(stack.base) as client:
        call = await client.call(codec="pcm", call_id=call_id)
        assert isinstance(call.answer, Answer) and call.answer.track_id == call_id
        audio = call.audio(replay=False)
        await call.tts("Hello from the client library.", play_id="hi")
        start = await call.wait_for(TrackStart, play_id="hi")
        end = await call.wait_for(TrackEnd, play_id="hi", timeout=15)
        assert start.track_id == end.track_id == "server-side-track"
        frames = []
        with contextlib.suppress(TimeoutError):  # until the track's last frame has come
            while True:
                frames.append(await asyncio.wait_for(audio.__anext__(), 0.5))
        heard = np.concatenate([f.samples for f in frames])
        assert {f.sample_rate for f in frames} == {16000} and {len(f.samples) for f in frames} == {320}
        # Frames go out only while the track plays: the sentence (~2 s), within the track's time.
        assert 16000 <= len(heard) <= end.duration * 16 + 320
        assert rms(heard) > 300, "speech, not silence"

        await call.hangup("done", "bot")
        hangup = await call.wait_ended()
        assert isinstance(hangup, Hangup) and (hangup.reason, hangup.initiator) == ("done", "bot")
        seen = [e async for e in call.events()]  # from the start; ends with the call, no exception
        assert in_order(
            names(seen), ["trackStart", "answer", "trackStart", "trackEnd", "trackEnd", "hangup"]
        ), names(seen)
        assert seen[-1] is hangup and call.ended


async def test_play_pcmu_interrupt_and_pause(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "khz.wav", tone(1000, 3.0))
    async with Client(stack.base) as client, client.call(codec="pcmu", call_id=call_id) as call:
        assert call.sample_rate == call.receive_rate == 8000
        await call.play(str(wav), play_id="file")
        await call.wait_for(TrackStart, play_id="file")
        heard = await call.read_audio(0.4, timeout=3)
        assert len(heard) == 3200 and abs(peak_freq(heard, 8000) - 1000) < 20, "G.711 decoded"
        await call.pause()
        await asyncio.sleep(0.3)
        assert len(await call.read_audio(0.1, timeout=0.3)) == 0, "nothing while paused"
        await call.resume()
        await call.interrupt()
        end = await call.wait_for(TrackEnd, play_id="file")
        assert end.duration < 2500, "cut short"

        await call.tts(LONG, play_id="long")
        await call.wait_for(TrackStart, play_id="long")
        await call.read_audio(0.3, timeout=5)
        await call.interrupt()
        cut = await call.wait_for(Interruption, play_id="long")
        assert cut.subtitle and 0 < cut.current <= cut.total_duration
        await call.wait_for(TrackEnd, play_id="long")
    assert call.ended and isinstance(call.hangup_event, Hangup), "the context manager hung up"


async def test_rest_routes_and_typed_server_sent_events(stack: StackInfo, call_id: str) -> None:
    async with (
        Client(stack.base) as client,
        Client(stack.base, flavor="active-call") as ac,
        Client(stack.base, flavor="rustpbx") as rp,
    ):
        call = await client.call(call_id=call_id, option=CallOption(extra={"who": "client test"}))
        # The option and the answer's time reach the registry just after the answer.
        for _ in range(100):
            (listed,) = [c for c in await client.list_calls() if c.id == call_id]
            (ac_listed,) = [c for c in await ac.list_calls() if c.id == call_id]
            if listed.option and ac_listed.start_time:
                break
            await asyncio.sleep(0.02)
        assert listed.call_type == "websocket" and listed.created_at
        assert listed.option and listed.option["extra"] == {"who": "client test"}
        assert ac_listed.call_type == "websocket" and ac_listed.option == listed.option
        assert ac_listed.start_time and ac_listed.start_time.endswith("Z")

        async with client.events(call_id, commands=True) as stream:
            await asyncio.sleep(0.2)  # subscribed from the request on
            await ac.send_command(call_id, {"command": "history", "speaker": "bot", "text": "by rest"})
            assert (await call.wait_for(AddHistory, text="by rest")).speaker == "bot"
            assert await rp.kill(call_id) is True
            hangup = await call.wait_ended()
            assert hangup is not None and (hangup.reason, hangup.initiator) == ("killed", "system")
            got = [item async for item in stream]  # ends with the call
        kinds = [type(i).__name__ for i in got]
        assert in_order(kinds, ["CommandSeen", "AddHistory", "TrackEnd", "Hangup"]), kinds
        assert isinstance(got[-1], Hangup) and got[-1].reason == "killed"

        assert await client.kill(call_id) is False and await ac.kill(call_id) is False
        with pytest.raises(CallNotFound):
            await client.send_command(call_id, {"command": "hangup"})
        with pytest.raises(CallNotFound):
            async with client.events(call_id):
                pass
        assert (await client.ice_servers())[0].urls
        assert (await client.precache("Welcome back.", cache_key=f"{call_id}-k")).status in (
            "cached",
            "exists",
        )


async def test_errors_are_typed_events(stack: StackInfo, call_id: str) -> None:
    async with Client(stack.base) as client, client.call(call_id=call_id) as call:
        await call.play("no-such-file.wav", play_id="missing")
        err = await call.wait_for(Error, code=404)
        assert err.sender.startswith("filetrack") and "no such file" in err.error
        await call.send({"command": "tts", "speaker": "x"})  # no text
        err = await call.wait_for(Error, sender="command")
        assert err.code == 400 and "text" in err.error
        await call.history("user", "still up")
        await call.wait_for(AddHistory, text="still up")


async def test_a_dropped_socket_raises_call_closed(stack: StackInfo, call_id: str) -> None:
    """Over the server's 4 MiB message limit: it says why and closes with 1009, without a hangup."""
    async with Client(stack.base) as client:
        call = await client.call(call_id=call_id)
        waiting = asyncio.create_task(call.wait_for(AddHistory, timeout=10))
        with contextlib.suppress(CallClosed):  # the server may close while the message is being written
            await call.send({"command": "history", "speaker": "user", "text": "x" * (5 << 20)})
        with pytest.raises(CallClosed) as caught:
            await waiting
        assert caught.value.call_id == call_id and caught.value.code == 1009
        with pytest.raises(CallClosed) as caught:
            await call.history("user", "anyone?")
        assert caught.value.code == 1009
        with pytest.raises(CallClosed):
            async for _ in call.events():
                pass
        err = await call.wait_for(Error, sender="socket")
        assert err.code == 413
        assert not call.ended


async def test_resume_with_reconnect(stack: StackInfo, call_id: str) -> None:
    async with Client(stack.base) as client, Client(stack.base) as elsewhere:
        call = await client.call(call_id=call_id, option=CallOption(resume=ResumeOption(timeout=10)))
        events = call.events()
        await call.tts(LONG, play_id="long")
        await call.wait_for(TrackStart, play_id="long")

        # Reopened while the old socket is still up: the new one takes over.
        await call.reconnect()
        await call.history("user", "after takeover")
        await call.wait_for(AddHistory, text="after takeover")

        # Another process resumes it: this socket is replaced, a drop for this one.
        other = await elsewhere.open("/call", call_id=call_id)
        seen: list[Event] = []
        with pytest.raises(CallClosed) as caught:
            async for e in events:
                seen.append(e)
        assert caught.value.code == 1000 and "replaced" in caught.value.reason
        await other.close()  # gone too: the call waits for a socket, holding its events
        await asyncio.sleep(0.2)
        await elsewhere.send_command(call_id, History(speaker="bot", text="while away"))

        await call.reconnect()  # back from the dropped state; the same iterator goes on
        await call.wait_for(AddHistory, text="while away")
        await call.hangup()
        async for e in events:
            seen.append(e)
        texts = [e.text for e in seen if isinstance(e, AddHistory)]
        assert texts == ["after takeover", "while away"], "held while away, delivered once"
        keys = [json.dumps(e.fields, sort_keys=True) for e in seen]
        assert len(keys) == len(set(keys)), "nothing delivered twice"
        assert isinstance(seen[-1], Hangup) and call.ended


async def test_the_readmes_example_runs(stack: StackInfo, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("## Python client", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(example.replace("http://localhost:8080", stack.base), "README.md", "exec"), namespace)
    question, _ = with_silence(0.3, speech("Please book a table for two people tonight."), 1.0)
    await namespace["main"](question)  # type: ignore[operator]
    said = capsys.readouterr().out
    assert "caller said" in said and "table" in said.lower(), said
    assert " after 1." in said or " after 2." in said, "about two seconds of greeting heard"


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves 127.0.0.1 out of its host candidates; the stack's peer is on loopback only."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.mark.usefixtures("loopback_ice")
async def test_webrtc_call_through_the_aiortc_helper(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "tone.wav", tone(600, 2.0))
    async with Client(stack.base) as client:
        call = await client.webrtc_call(call_id=call_id, peer=RtcPeer(codec="pcmu"))
        async with call:
            assert call.answer is not None and "PCMU" in call.answer.sdp
            await call.send_audio(tone(440, 0.5), pace=False)
            await call.wait_for(MediaReady, timeout=10)
            await call.play(str(wav), play_id="tone")
            await call.wait_for(TrackStart, play_id="tone")
            await asyncio.sleep(0.3)  # past the start of the tone
            heard = await call.read_audio(1.0, timeout=5)
            assert len(heard) == 16000 and abs(peak_freq(heard) - 600) < 20, "heard on the peer connection"
        assert isinstance(call.hangup_event, Hangup)


async def test_outbound_sip_call(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "tone.wav", tone(800, 1.0))
    async with sip_peer() as peer, Client(stack.base) as client:
        call = await client.sip_call(
            peer.uri,
            caller="sip:bot@127.0.0.1",
            call_id=call_id,
            ring_timeout=10,
            option=CallOption(subscribe=True),
        )
        assert call.answer is not None and call.answer.sdp.startswith("v=0")
        _, phone = await peer.leg()
        await call.play(str(wav), play_id="tone")
        await call.wait_for(TrackEnd, play_id="tone", timeout=5)
        assert abs(peak_freq(phone.heard()[-8000:]) - 800) < 20
        # option.subscribe: what the phone hears, mirrored to the socket as track 0 (16 kHz).
        await asyncio.sleep(0.2)
        mirrored = [f for f in call.received_audio() if f.track == 0]
        assert mirrored and {f.sample_rate for f in mirrored} == {16000}
        played = np.concatenate([f.samples for f in mirrored])
        assert len(played) >= 12800 and abs(peak_freq(played) - 800) < 20
        await call.hangup()
        assert (await call.wait_ended()) is not None
        await phone.wait("ended")


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StackInfo, int]]:
    """A stack that announces inbound SIP calls to a webhook on a port the test then listens on."""
    port = free_port()
    with running_stack(
        tmp_path_factory.mktemp("hooked"),
        1,
        1,
        SIP_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
        SIP_ACCEPT_TIMEOUT="5",
    ) as info:
        yield info, port


async def test_inbound_sip_call_through_the_webhook_and_attach(hooked: tuple[StackInfo, int]) -> None:
    info, port = hooked
    caller = Caller()
    async with WebhookReceiver(port=port, path="/hook") as hook, Client(info.base) as client:
        try:
            leg = await caller.call(info.sip_port)
            invite = await hook.next(timeout=5)
            assert invite.caller.startswith("sip:alice@") and invite.offer.startswith("v=0")
            call = await client.attach(invite.dialog_id)
            incoming = await call.wait_for(Incoming)
            assert incoming.caller == invite.caller and incoming.sdp
            await call.accept()
            assert (await call.wait_for(Answer)).sdp
            await caller.phone.wait("answered")
            sent = asyncio.create_task(play_tone(leg, 700, 1.0))
            await call.wait_for(MediaReady, timeout=5)
            await sent
            await call.hangup()
            hangup = await call.wait_ended()
            assert hangup is not None and hangup.reason == "normal_clearing"
            await caller.phone.wait("ended")
        finally:
            await caller.close()
