"""active-call's additions to the call API (issue 20), through a media session built from fakes: no
processes, no sockets. The timing rules have their own virtual-clock tests beside their parts."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from common import events, wire
from common.protocol import CallOption, Custom, Invite, Mute, command_body, server_track
from tests.unit.callfakes import FakeHost, fake_services
from worker.call.session import CallSession


def session_of(call_type: str = "websocket", host: FakeHost | None = None, **kw: Any) -> CallSession:
    return CallSession(fake_services(), host or FakeHost(), "c1", call_type, "web-1", False, 0, **kw)


def events_of(host: FakeHost) -> list[dict[str, Any]]:
    return [m["b"] for m in host.sent if m["k"] == wire.EVT]


async def test_custom_is_echoed_as_sent_without_a_track_id() -> None:
    host = FakeHost()
    session = session_of(host=host)
    data = {"n": [1, None, {"deep": True}], "s": "x"}
    await session._dispatch(Custom(sender="app", data=data))
    await session._dispatch(Custom(data=None))
    first, second = events_of(host)
    assert list(first) == ["event", "timestamp", "sender", "data"]
    assert first["event"] == "custom" and first["sender"] == "app" and first["data"] == data
    assert isinstance(first["timestamp"], int)
    assert second == {"event": "custom", "timestamp": second["timestamp"], "data": None}


async def test_custom_runs_while_the_setup_waits_for_its_peer() -> None:
    """A WebRTC invite waiting for ICE gathering does not hold a `custom` back (it needs no answer)."""
    host = FakeHost()
    session = session_of("webrtc", host)
    gathering = asyncio.Event()

    async def invite(option: CallOption) -> None:
        await gathering.wait()

    session.leg.invite = invite  # type: ignore[method-assign]
    session.start()
    session.deliver(wire.CMD, command_body(Invite(option=CallOption(offer="v=0"))))
    session.deliver(wire.CMD, command_body(Custom(data="while ringing")))
    for _ in range(100):
        if events_of(host):
            break
        await asyncio.sleep(0.01)
    assert [e["event"] for e in events_of(host)] == ["custom"]
    assert events_of(host)[0]["data"] == "while ringing"
    gathering.set()
    session._tasks.cancel()


def test_the_server_side_track_id_comes_from_the_dispatch_params_as_the_frontend_checked_it() -> None:
    assert server_track({"dump": True, "serverSideTrack": "agent"}) == "agent"
    for params in ({}, {"serverSideTrack": None}, {"serverSideTrack": 7}, {"serverSideTrack": "a b"}):
        assert server_track(params) == "server-side-track"


async def test_mute_names_the_server_side_track_by_its_id() -> None:
    host = FakeHost()
    session = session_of(host=host, server_track="agent")
    await session._dispatch(Invite(option=CallOption()))
    await session._execute(Mute(track_id="agent"), None)
    assert session.tracks.muted and not session.caller_muted
    await session._execute(Mute(track_id="server-side-track"), None)
    (error,) = [e for e in events_of(host) if e["event"] == "error"]
    assert error["code"] == 400
    assert error["error"] == "trackId: no track 'server-side-track' in this call (use 'c1' or 'agent')"
    assert session.hooks.server_track == "agent" and session.speaker.tracks.track_id == "agent"


@pytest.mark.parametrize(("seconds", "armed_ms"), [(None, None), (0, None), (2, 2000), (0.25, 250)])
async def test_the_inactivity_watch_starts_at_the_answer_and_hears_the_caller(
    seconds: float | None, armed_ms: float | None
) -> None:
    session = session_of()
    session.listener.feed = lambda pcm: None  # type: ignore[method-assign]
    option = CallOption(inactivity_timeout=seconds)
    await session._prepare(option)
    assert session.inactivity is None, "not before the answer"
    await session.media_up("")
    watch = session.inactivity
    assert (watch.timeout_ms if watch is not None else None) == armed_ms
    if watch is not None:
        session.caller_audio(np.zeros(320, dtype=np.int16))
        assert watch.heard
        session.tick()
        assert not watch.heard and not watch.fired


@pytest.mark.parametrize("call_type", ["sip", "websocket"])
async def test_the_hangup_says_when_the_call_rang_if_it_did(call_type: str) -> None:
    host = FakeHost()
    session = session_of(call_type, host)
    if call_type == "sip":
        session.leg.ring_ms = 1_700_000_000_250  # type: ignore[misc]
    await session.hangup("normal_clearing", "caller")
    (hangup,) = [e for e in events_of(host) if e["event"] == "hangup"]
    if call_type == "sip":
        assert hangup["ringingTime"] == events.rfc3339(1_700_000_000_250) == "2023-11-14T22:13:20.250+00:00"
    else:
        assert "ringingTime" not in hangup
