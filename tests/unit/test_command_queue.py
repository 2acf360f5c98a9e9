"""The command queue's rule (worker/call/commands.py), on a loop whose clock jumps (virtual time).

A fake call executes the commands: its `invite` rings for `ring` virtual seconds before it is answered,
its `tts` and `play` take a second each, `hangup` ends the call. Every test reads when (in virtual
seconds) each command ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import numpy as np

from common.errors import BadCommand
from common.protocol import (
    NAMES,
    Command,
    Hangup,
    Interrupt,
    Invite,
    Pause,
    Play,
    Resume,
    Tts,
    command_from_dict,
)
from tests.sip.test_transaction import now, run
from worker.call.commands import CommandQueue, Parsed
from worker.call.tracks import ServerSide


class FakeCall:
    def __init__(self, ring: float = 30.0, answer: bool = True) -> None:
        self.ring = ring
        self.answer = answer
        self.ending = False
        self.ran: list[tuple[str, float]] = []
        self.acked: list[int] = []
        self.queue = CommandQueue(self.parse, self.execute, lambda cmd: isinstance(cmd, Invite), self.spawn)
        self.runner = asyncio.create_task(self.queue.run(lambda: self.ending))
        self._seq = 0

    def send(self, command: str, **fields: Any) -> None:
        self._seq += 1
        self.queue.put({"command": command, "_seq": self._seq, **fields})

    def parse(self, body: dict[str, Any]) -> Parsed | None:
        seq = body.pop("_seq")
        try:
            return command_from_dict(body), seq
        except BadCommand:
            self.ran.append(("error", now()))
            return None

    async def execute(self, cmd: Command, seq: int | None) -> None:
        if isinstance(cmd, Invite):
            await asyncio.sleep(self.ring)
            if not self.answer:
                self.ending = True  # rejected: the call ends with its setup
                self.ran.append(("rejected", now()))
                return
        elif isinstance(cmd, Tts | Play):
            await asyncio.sleep(1.0)
        elif isinstance(cmd, Hangup):
            self.ending = True
            self.queue.cancel_setup()
        self.ran.append((NAMES[type(cmd)], now()))
        assert seq is not None
        self.acked.append(seq)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.create_task(coro, name=name)

    async def finish(self, timeout: float = 120.0) -> None:
        await asyncio.wait_for(self.runner, timeout)


def test_without_a_setup_commands_run_one_at_a_time_in_order() -> None:
    async def scenario() -> None:
        call = FakeCall()
        call.send("tts", text="hello")
        call.send("history", speaker="user", text="hi")
        call.send("play", url="a.wav")
        call.send("hangup")
        await call.finish()
        assert call.ran == [("tts", 1.0), ("history", 1.0), ("play", 2.0), ("hangup", 2.0)]

    run(scenario)


def test_commands_that_need_no_answer_run_while_it_rings() -> None:
    async def scenario() -> None:
        call = FakeCall(ring=30.0)
        call.send("invite", option={"callee": "sip:bob@192.0.2.10"})
        call.send("history", speaker="user", text="hi")
        call.send("mute")
        call.send("candidate", candidates=[])
        call.send("tts")  # no text: a bad command is reported at once, and holds nothing up
        call.send("interrupt")
        await asyncio.sleep(5.0)
        call.send("unmute", trackId="server-side-track")
        await asyncio.sleep(30.0)
        call.send("hangup")
        await call.finish()
        assert call.ran == [
            ("history", 0.0),
            ("mute", 0.0),
            ("candidate", 0.0),
            ("error", 0.0),
            ("interrupt", 0.0),
            ("unmute", 5.0),
            ("invite", 30.0),
            ("hangup", 35.0),
        ]
        assert sorted(call.acked) == [1, 2, 3, 4, 6, 7, 8]  # the bad one (5) is acknowledged by parse

    run(scenario)


def test_commands_that_need_the_answer_wait_for_it_and_keep_their_order() -> None:
    async def scenario() -> None:
        call = FakeCall(ring=30.0)
        call.send("invite", option={})
        call.send("history", speaker="user", text="before")
        call.send("tts", text="hello")
        call.send("history", speaker="user", text="after")  # behind a held tts: held too
        await asyncio.sleep(10.0)
        call.send("mute")
        call.send("play", url="a.wav")
        call.send("refer", target="sip:carol@192.0.2.10")
        await asyncio.sleep(30.0)
        call.send("hangup")
        await call.finish()
        assert call.ran == [
            ("history", 0.0),
            ("invite", 30.0),
            ("tts", 31.0),
            ("history", 31.0),
            ("mute", 31.0),
            ("play", 32.0),
            ("refer", 32.0),
            ("hangup", 40.0),
        ]

    run(scenario)


def test_hangup_overtakes_what_is_held_and_ends_the_ringing() -> None:
    async def scenario() -> None:
        call = FakeCall(ring=30.0)
        call.send("invite", option={})
        call.send("tts", text="hello")
        await asyncio.sleep(2.0)
        call.send("hangup")
        await call.finish()
        assert call.ran == [("hangup", 2.0)], "the invite was cancelled, the held tts dropped"
        assert now() == 2.0
        await asyncio.sleep(60.0)
        assert call.ran == [("hangup", 2.0)]

    run(scenario)


def test_a_setup_that_ends_the_call_drops_what_was_held() -> None:
    async def scenario() -> None:
        call = FakeCall(ring=3.0, answer=False)
        call.send("invite", option={})
        call.send("play", url="a.wav")
        call.send("history", speaker="user", text="x")
        await call.finish()
        assert call.ran == [("rejected", 3.0)]

    run(scenario)


def test_a_second_setup_among_the_held_commands_holds_the_rest_again() -> None:
    async def scenario() -> None:
        call = FakeCall(ring=10.0)
        call.send("invite", option={})
        call.send("invite", option={})  # held; once released, a setup of its own (the session answers 409)
        call.send("tts", text="hello")
        await asyncio.sleep(25.0)
        call.send("hangup")
        await call.finish()
        assert call.ran == [("invite", 10.0), ("invite", 20.0), ("tts", 21.0), ("hangup", 25.0)]

    run(scenario)


class TrackCall:
    """The queue in front of a real server-side track (worker/call/tracks.py), its media clock ticking every
    20 virtual ms: what the track did shows whether each command ran, and when."""

    def __init__(self, ring: float) -> None:
        self.ring = ring
        self.ending = False
        self.log: list[tuple[str, int]] = []
        self.frames = 0
        self.side = ServerSide("c", self.event, lambda *_: None, lambda: self.ending, self.open, now=self.ms)
        self.queue = CommandQueue(self.parse, self.execute, lambda cmd: isinstance(cmd, Invite), self.spawn)
        self.runner = asyncio.create_task(self.queue.run(lambda: self.ending))
        self.clock = asyncio.create_task(self.tick())

    @staticmethod
    def ms() -> int:
        return round(now() * 1000)

    def event(self, ev: dict[str, Any]) -> None:
        self.log.append((ev["event"], self.ms()))

    async def open(self, source: str) -> np.ndarray:
        return np.ones(16000, dtype=np.int16)  # 1 s

    async def tick(self) -> None:
        while not self.ending:
            await asyncio.sleep(0.02)
            self.frames += self.side.tick() is not None

    def send(self, command: str, **fields: Any) -> None:
        self.queue.put({"command": command, **fields})

    def parse(self, body: dict[str, Any]) -> Parsed | None:
        return command_from_dict(body), None

    async def execute(self, cmd: Command, seq: int | None) -> None:
        match cmd:
            case Invite():
                await asyncio.sleep(self.ring)
                self.log.append(("answer", self.ms()))
            case Play():
                self.side.play(cmd.url)
            case Pause() | Resume():
                self.side.pause(isinstance(cmd, Pause))
            case Interrupt():
                self.side.interrupt()
            case Hangup():
                self.ending = True
                self.queue.cancel_setup()
                self.side.close()
                self.log.append(("hangup", self.ms()))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.create_task(coro, name=name)

    async def finish(self) -> None:
        await asyncio.wait_for(self.runner, 120)
        await self.clock


def test_a_pause_behind_a_held_play_pauses_that_play_once_answered() -> None:
    async def scenario() -> None:
        call = TrackCall(ring=1.0)
        call.send("invite", option={})
        call.send("play", url="a.wav")
        call.send("pause")  # behind a held command: held too, so it finds the play there
        await asyncio.sleep(3.0)
        assert call.log == [("answer", 1000), ("trackStart", 1000)]
        assert call.frames == 0, "paused before its first frame"
        call.send("resume")
        await asyncio.sleep(1.1)
        assert call.frames == 50 and call.log[-1] == ("trackEnd", 4020)
        call.send("hangup")
        await call.finish()

    run(scenario)


def test_an_interrupt_while_it_rings_runs_at_once_and_a_hangup_drops_the_held_play() -> None:
    async def scenario() -> None:
        call = TrackCall(ring=30.0)
        call.send("play", url="a.wav")
        await asyncio.sleep(0.5)
        call.send("invite", option={})
        call.send("interrupt")  # nothing held ahead of it: it stops the play now, the answer still pending
        call.send("play", url="b.wav")  # needs the answer: held
        await asyncio.sleep(1.0)
        call.send("hangup")
        await call.finish()
        assert call.log == [("trackStart", 0), ("trackEnd", 500), ("hangup", 1500)]
        assert 20 <= call.frames <= 25

    run(scenario)
