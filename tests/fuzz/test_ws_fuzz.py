"""Fuzzing the call WebSocket of the real stack (2 frontends, 2 media processes, Redis) over real sockets.

Hypothesis draws lists of frames; each example sends one list on a connection kept across examples, then a
`history` command whose `addHistory` proves the call still works, in order. Every text frame that the
command parser rejects must have had its own `error{sender:"command", code:400}` by then, and every valid
`history` among the frames its `addHistory` with the same text. Afterwards no process has died or been
restarted, `/health` still sees all of them, and none has grown much.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from common.errors import BadCommand
from common.protocol import MAX_TEXT_FRAME, parse_command
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.fuzz.conftest import LONG, scale
from tests.fuzz.stack_probe import Loop, Snapshot, log_tail
from tests.fuzz.test_protocol_fuzz import COMMAND_DICTS, JSON, JSON_PIECES

# The examples share connections, so each test runs long; under the long profile, as long as it takes.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(0 if LONG else 300)]

MAX_BINARY_FRAME = 64 * 1024  # frontend/connection.py
SOCKET_LIMIT = 4 * MAX_TEXT_FRAME  # the WebSocket's max_msg_size (frontend/calls.py)


def rejected(text: str) -> bool:
    try:
        parse_command(text)
    except BadCommand:
        return True
    return False


class Huge(str):
    """A frame too big to print in a failing example (hypothesis would warn, and warnings are errors)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} characters: {str.__repr__(self[:40])}...>"


def _huge(size: int, shape: int) -> str:
    head, tail = [("", ""), ('{"command":"tts","text":"', '"}'), ('{"command":"history","text":"', '"}')][
        shape
    ]
    return Huge(head + "x" * (size - len(head) - len(tail)) + tail)


SMALL_BAD_TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(JSON_PIECES, max_size=20).map("".join),
    JSON.map(json.dumps),  # ASCII-escaped, so lone surrogates arrive as \ud800 escapes
    COMMAND_DICTS.map(json.dumps),
    st.integers(20, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(20, 500).map(lambda n: '{"command":"invite","option":{"extra":' + '{"a":' * n + "1}" + "}" * n),  # noqa: E501
).filter(rejected)  # fmt: skip
# Up to the frame limit (invalid JSON; a history without its speaker) and beyond it.
HUGE_BAD_TEXT = (
    st.tuples(st.integers(MAX_TEXT_FRAME - 2000, MAX_TEXT_FRAME + 300_000), st.integers(0, 2))
    .map(lambda a: _huge(*a))
    .filter(rejected)
)
BAD_TEXT = st.one_of(SMALL_BAD_TEXT, HUGE_BAD_TEXT)
# Valid commands that change nothing a later example depends on.
SAFE = st.one_of(
    st.builds(lambda s, t: {"command": "history", "speaker": s, "text": t}, st.text(max_size=20), st.text()),
    st.sampled_from(
        [
            {"command": "mute"},
            {"command": "unmute"},
            {"command": "mute", "trackId": "server-side-track"},
            {"command": "unmute", "trackId": "server-side-track"},
            {"command": "interrupt"},
            {"command": "interrupt", "graceful": True},
            {"command": "pause"},
            {"command": "resume"},
            {"command": "candidate", "candidates": []},
        ]
    ),
).map(json.dumps)
TEXT_FRAMES = st.lists(st.one_of(BAD_TEXT, BAD_TEXT, SAFE), min_size=1, max_size=6)
BINARY_FRAMES = st.lists(
    st.one_of(
        st.binary(max_size=2000),
        st.integers(0, 1000).map(lambda n: b"\1\0" * n),
        st.integers(MAX_BINARY_FRAME + 1, MAX_BINARY_FRAME + 5000).map(lambda n: b"\0" * n),
    ),
    min_size=1,
    max_size=6,
)


class Session:
    """One call socket reused across examples, with what has been sent on it (reported if it dies)."""

    def __init__(self, client: CallClient) -> None:
        self.client = client
        self.sent: list[str | bytes] = []
        self.serial = 0

    @classmethod
    async def open(cls, stack: StackInfo, path: str = "/call", invite: bool = True) -> Session:
        client = await CallClient.open(stack.ws, path, call_id=f"fuzz.{uuid.uuid4()}")
        if invite:
            await client.invite()
        return cls(client)

    async def exchange(self, frames: list[str | bytes]) -> list[dict[str, Any]]:
        """Send `frames`, then a history marker; the events that came in meanwhile, marker included."""
        if self.client.closed.is_set():
            sent = [_short(f) for f in self.sent[-12:]]
            raise AssertionError(f"the socket was closed after: {sent}{self.log()}")
        mark = len(self.client.events)
        for frame in frames:
            self.sent.append(frame)
            if isinstance(frame, bytes):
                await self.client.ws.send_bytes(frame)
            else:
                await self.client.ws.send_str(frame)
        self.serial += 1
        marker = f"fuzz-marker-{self.serial}"
        await self.client.send({"command": "history", "speaker": "fuzz", "text": marker})
        try:
            await self.client.event("addHistory", timeout=20, after=mark, text=marker)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; after: {[_short(f) for f in self.sent[-12:]]}{log_tail()}"
            ) from None
        return self.client.events[mark:]

    def log(self) -> str:
        return f"; close code {self.client.ws.close_code}" + log_tail(self.client.call_id)

    async def close(self) -> None:
        await self.client.close()


def _short(frame: str | bytes) -> str:
    return repr(frame[:80]) + (f"... ({len(frame)})" if len(frame) > 80 else "")


def _errors(evs: list[dict[str, Any]], sender: str) -> list[dict[str, Any]]:
    return [e for e in evs if e.get("event") == "error" and e.get("sender") == sender]


def test_text_frames_on_an_answered_call(fuzz_stack: StackInfo, fuzz_loop: Loop) -> None:
    before = Snapshot.take(fuzz_stack)
    session = fuzz_loop.run(Session.open(fuzz_stack))
    call_id = session.client.call_id
    try:

        @settings(max_examples=scale(100))
        @given(TEXT_FRAMES)
        def run(frames: list[str]) -> None:
            note([_short(f) for f in frames])
            evs = fuzz_loop.run(session.exchange(list(frames)))
            bad = [f for f in frames if rejected(f)]
            errors = _errors(evs, "command")
            assert len(errors) == len(bad), (errors, [_short(f) for f in bad])
            assert all(e["code"] == 400 and e["trackId"] == call_id for e in errors)
            for frame, error in zip(bad, errors, strict=True):
                if len(frame) > MAX_TEXT_FRAME:
                    assert "exceeds" in error["error"]
            assert not [e for e in evs if e.get("event") in ("hangup", "trackEnd")], evs
            sent = [json.loads(f)["text"] for f in frames if not rejected(f) and '"history"' in f]
            got = [e["text"] for e in evs if e.get("event") == "addHistory"][:-1]
            assert got == sent

        run()
    finally:
        fuzz_loop.run(session.close())
    before.check_after(fuzz_stack)


def test_binary_frames_on_an_answered_call(fuzz_stack: StackInfo, fuzz_loop: Loop) -> None:
    before = Snapshot.take(fuzz_stack)
    session = fuzz_loop.run(Session.open(fuzz_stack))
    try:

        @settings(max_examples=scale(40))
        @given(BINARY_FRAMES)
        def run(frames: list[bytes]) -> None:
            note([len(f) for f in frames])
            evs = fuzz_loop.run(session.exchange(list(frames)))
            oversized = [f for f in frames if len(f) > MAX_BINARY_FRAME]
            errors = _errors(evs, "audio")
            assert len(errors) == len(oversized) and all("exceeds" in e["error"] for e in errors), errors
            assert not _errors(evs, "command")
            assert not [e for e in evs if e.get("event") == "hangup"], evs

        run()
    finally:
        fuzz_loop.run(session.close())
    before.check_after(fuzz_stack)


@st.composite
def before_invite(draw: st.DrawFn) -> tuple[str, list[str | bytes]]:
    path = draw(st.sampled_from(["/call", "/call/webrtc", "/call/sip"]))
    frames: list[str | bytes] = draw(
        st.lists(st.one_of(BAD_TEXT, st.binary(max_size=700)), min_size=1, max_size=6)
    )
    return path, frames


def test_frames_before_invite(fuzz_stack: StackInfo, fuzz_loop: Loop) -> None:
    """Garbage on a fresh socket of each call type, before any invite: errors for the bad text, the audio
    held; then (on /call) the invite is answered and the call works."""
    before = Snapshot.take(fuzz_stack)

    async def one(path: str, frames: list[str | bytes]) -> None:
        session = await Session.open(fuzz_stack, path, invite=False)
        try:
            evs = await session.exchange(frames)
            bad = [f for f in frames if isinstance(f, str) and rejected(f)]
            assert len(_errors(evs, "command")) == len(bad), evs
            if path == "/call":
                await session.client.invite()
                await session.exchange([])
            await session.client.send({"command": "hangup"})
            await session.client.event("hangup", timeout=10)
        finally:
            await session.close()

    @settings(max_examples=scale(20))
    @given(before_invite())
    def run(case: tuple[str, list[str | bytes]]) -> None:
        note([_short(f) for f in case[1]])
        fuzz_loop.run(one(*case))

    run()
    before.check_after(fuzz_stack)


def test_commands_after_hangup(fuzz_stack: StackInfo, fuzz_loop: Loop) -> None:
    """Anything sent between `hangup` and the server closing the socket: no crash, the socket closes, the
    next call works."""
    before = Snapshot.take(fuzz_stack)
    late_commands = st.sampled_from(
        [
            {"command": "tts", "text": "too late"},
            {"command": "play", "url": "missing.wav"},
            {"command": "invite", "option": {}},
            {"command": "hangup"},
            {"command": "history", "speaker": "u", "text": "late"},
            {"command": "refer", "target": "sip:x@127.0.0.1:9"},
            {"command": "accept", "option": {}},
        ]
    ).map(json.dumps)

    async def one(frames: list[str | bytes]) -> None:
        session = await Session.open(fuzz_stack)
        try:
            await session.client.send({"command": "hangup", "reason": "fuzz"})
            for frame in frames:
                if session.client.closed.is_set():
                    break
                try:
                    if isinstance(frame, bytes):
                        await session.client.ws.send_bytes(frame)
                    else:
                        await session.client.ws.send_str(frame)
                except ConnectionError:
                    break  # the server closed the socket already: as it should, soon
            await session.client.wait_closed(10)
            hangups = [e for e in session.client.events if e.get("event") == "hangup"]
            if hangups:
                assert hangups[0]["reason"] == "fuzz", hangups
            else:
                # Reported, not fixed here (frontend/connection.py): the server closes the socket while the
                # client's frames are still arriving, the unread input makes the kernel reset the connection,
                # and the reset can destroy the hangup event before the client reads it. Any other loss of
                # the hangup is a failure.
                assert session.client.ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE, (
                    f"socket closed without hangup; events: {session.client.names()}{session.log()}"
                )
        finally:
            await session.close()
        fresh = await Session.open(fuzz_stack)
        try:
            await fresh.exchange([])
        finally:
            await fresh.close()

    @settings(max_examples=scale(15))
    @given(st.lists(st.one_of(late_commands, BAD_TEXT, st.binary(max_size=640)), min_size=1, max_size=6))
    def run(frames: list[str | bytes]) -> None:
        note([_short(f) for f in frames])
        fuzz_loop.run(one(frames))

    run()
    before.check_after(fuzz_stack)


def test_a_message_over_the_socket_limit_closes_only_its_own_socket(
    fuzz_stack: StackInfo, fuzz_loop: Loop
) -> None:
    """Past max_msg_size aiohttp cannot go on reading the stream: that socket closes (with an error event
    first, where the frontend sends one), and the other calls on the same frontend carry on."""
    before = Snapshot.take(fuzz_stack)

    async def scenario() -> None:
        victim = await Session.open(fuzz_stack)
        others = [await Session.open(fuzz_stack)]
        while others[-1].client.frontend != victim.client.frontend and len(others) < 8:
            others.append(await Session.open(fuzz_stack))  # one on the victim's frontend, most likely
        bystander = others[-1]
        try:
            try:
                await victim.client.ws.send_str("x" * (SOCKET_LIMIT + 1))
            except ConnectionError:
                pass  # closed by the server while the rest of the message was still being written
            await victim.client.wait_closed(20)
            # 1009 when the close frame got through, 1006 when the server dropped the connection while the
            # rest of the message was still being written
            closed = (aiohttp.WSCloseCode.MESSAGE_TOO_BIG, aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
            assert victim.client.ws.close_code in closed, victim.client.ws.close_code
            await bystander.exchange(['{"command": "nope"}'])
        finally:
            await victim.close()
            for other in others:
                await other.close()

    fuzz_loop.run(scenario())
    before.check_after(fuzz_stack)
