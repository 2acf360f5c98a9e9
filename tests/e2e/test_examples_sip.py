"""The examples in examples/ run as a user would run them (a process, its command line) against a stack
whose SIP webhook points at them, with scripted SIP phones as callers, agent and the numbers dialed."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from common.embedded import free_port
from tests.audio_util import peak_freq, rms
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.sip_peer import play_tone, sip_peer
from tests.e2e.test_sip_inbound import Caller
from tests.speech import speech
from worker.sip.leg import SipLeg

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StackInfo, int]]:
    """A stack announcing inbound SIP calls to a webhook on `port`, where each test runs its example."""
    port = free_port()
    with running_stack(
        tmp_path_factory.mktemp("examples"),
        1,
        1,
        SIP_WEBHOOK_URL=f"http://127.0.0.1:{port}/webhook",
        SIP_ACCEPT_TIMEOUT="10",
    ) as info:
        yield info, port


class Example:
    """An example's process; `lines` is what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line(self, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        text = raw.decode().strip()
        self.lines.append(text)
        return text

    async def finish(self, timeout: float = 20.0) -> list[str]:
        """Until the process exits (it was told how many calls to take); all it printed."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.lines += out.decode().splitlines()
        assert await asyncio.wait_for(self.proc.wait(), 5) == 0
        return self.lines


@contextlib.asynccontextmanager
async def example(name: str, *args: str, serves: bool = True) -> AsyncIterator[Example]:
    """The example `name` running with `args`; with `serves`, once its webhook listens."""
    # This checkout's packages, whatever the virtualenv's editable install points at.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / name), *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    ex = Example(proc)
    try:
        if serves:
            assert (await ex.line()).startswith("listening on http://127.0.0.1:")
        yield ex
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def speech_after(audio: np.ndarray, start: int) -> float:
    """The loudest 100 ms of what was heard (16 kHz) from sample `start` on."""
    tail = audio[start:]
    return max((rms(tail[i : i + 1600]) for i in range(0, len(tail) - 1599, 1600)), default=0.0)


async def press(leg: SipLeg, digit: str) -> None:
    """A key press as SIP INFO (application/dtmf-relay), the way many phones send it."""
    body = f"Signal={digit}\r\nDuration=160\r\n".encode()
    final = leg._send_in_dialog("INFO", body, "application/dtmf-relay")
    assert final is not None
    assert (await asyncio.wait_for(final, 5)).status == 200


async def test_webhook_inbound_answers_greets_and_hangs_up(hooked: tuple[StackInfo, int]) -> None:
    info, port = hooked
    args = ("--server", info.base, "--port", str(port), "--calls", "1")
    async with example("webhook_inbound.py", *args, "--greeting", "Hello from the example.") as ex:
        caller = Caller()
        try:
            await caller.call(info.sip_port)
            await caller.phone.wait("answered", timeout=15)
            answered_at = len(caller.phone.heard())
            # The example hangs up once the greeting has played: the phone gets a BYE.
            assert await caller.phone.wait("ended", timeout=20) is not None
            assert speech_after(caller.phone.heard(), answered_at) > 500, "the greeting was heard"
        finally:
            await caller.close()
        lines = await ex.finish()
    assert lines[-1].startswith("call ") and lines[-1].endswith(": autohangup"), lines


async def test_ivr_transfers_to_the_agent_on_2(hooked: tuple[StackInfo, int]) -> None:
    info, port = hooked
    async with sip_peer() as agent:
        args = ("--server", info.base, "--port", str(port), "--calls", "1", "--agent", agent.uri)
        async with example("ivr.py", *args) as ex:
            caller = Caller()
            try:
                leg = await caller.call(info.sip_port)
                await caller.phone.wait("answered", timeout=15)
                await asyncio.sleep(1.0)  # into the menu prompt
                assert speech_after(caller.phone.heard(), 0) > 500, "the menu is heard"
                await press(leg, "2")
                agent_leg, agent_phone = await agent.leg(timeout=15)
                await asyncio.sleep(1.0)  # the agent answers; the server bridges the legs
                heard_at = len(agent_phone.heard())
                await play_tone(leg, 700, 1.0)
                heard = agent_phone.heard()[heard_at:]
                assert len(heard) > 8000, "the agent hears the caller"
                assert abs(peak_freq(heard[-8000:]) - 700) < 20
                agent_leg.hangup()  # the agent is done: the call ends with the transfer
                assert await caller.phone.wait("ended", timeout=10) is not None
            finally:
                await caller.close()
            lines = await ex.finish()
    assert lines[-1].endswith(": transferred, ended: refer"), lines


async def test_ivr_prompts_twice_then_hangs_up_without_a_key(hooked: tuple[StackInfo, int]) -> None:
    info, port = hooked
    args = ("--server", info.base, "--port", str(port), "--calls", "1", "--agent", "sip:nobody@127.0.0.1")
    async with example("ivr.py", *args, "--timeout", "1") as ex:
        caller = Caller()
        try:
            await caller.call(info.sip_port)
            await caller.phone.wait("answered", timeout=15)
            assert await caller.phone.wait("ended", timeout=30) is not None
            # Two prompts and a goodbye: three stretches of speech with quiet between them.
            heard = caller.phone.heard()
            levels = [rms(heard[i : i + 1600]) for i in range(0, len(heard), 1600)]
            loud = [lvl > 300 for lvl in levels]
            stretches = sum(1 for a, b in zip([False, *loud], loud, strict=False) if b and not a)
            assert stretches >= 3, levels
        finally:
            await caller.close()
        lines = await ex.finish()
    assert lines[-1].endswith(": no choice, ended: autohangup"), lines


async def say(leg: SipLeg, samples: np.ndarray) -> None:
    """Send 16 kHz samples on `leg` in real time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(0, len(samples) - 319, 320):
        leg.push(samples[i : i + 320])
        await asyncio.sleep(max(0.0, start + (i // 320 + 1) * 0.02 - loop.time()))


async def test_outbound_dialer_sorts_out_who_answered(hooked: tuple[StackInfo, int], tmp_path: Path) -> None:
    info, _ = hooked
    hello = speech("Hello, who is this?")
    out = tmp_path / "results.csv"
    async with sip_peer(reject=486) as busy, sip_peer() as person, sip_peer() as silent:
        numbers = [busy.uri, person.uri, silent.uri]
        args = ("--server", info.base, "--csv", str(out), "--concurrency", "2", "--listen", "3", *numbers)
        async with example("outbound_dialer.py", *args, serves=False) as ex:
            leg, phone = await person.leg(timeout=15)
            await asyncio.sleep(0.5)  # the ACK
            await say(leg, hello)
            lines = await ex.finish(timeout=40)
            assert speech_after(phone.heard(), 0) > 500, "the person heard the message"
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["number"] for r in rows] == numbers, lines
    assert [r["result"] for r in rows] == ["rejected", "human", "silent"], rows
    assert rows[0]["code"] == "486"
    assert 0 < int(rows[1]["talk_ms"]) < 3000  # "Hello": the first utterance
