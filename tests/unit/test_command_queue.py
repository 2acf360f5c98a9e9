"""The command queue's rule (worker/call/commands.py), on a loop whose clock jumps (virtual time).

A fake call executes the commands: its `invite` rings for `ring` virtual seconds before it is answered,
its `tts` and `play` take a second each, `hangup` ends the call. Every test reads when (in virtual
seconds) each command ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from common.errors import BadCommand
from common.protocol import NAMES, Command, Hangup, Invite, Play, Tts, command_from_dict
from tests.sip.test_transaction import now, run
from worker.call.commands import CommandQueue, Parsed


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
