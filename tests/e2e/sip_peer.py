"""A SIP phone in the test process, built on the server's own SIP stack: answers or places calls on loopback,
sends a tone, and keeps what it hears. sipp and baresip are the independent peers; this one is scriptable
down to single in-dialog requests (for forwarding, INFO, re-INVITE and transfer tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from tests.audio_util import tone
from worker.sip.agent import SipAgent
from worker.sip.leg import SipLeg
from worker.sip.message import Request
from worker.sip.rtp import PortPool
from worker.sip.transaction import ServerTransaction


@dataclass
class Phone:
    """Records one leg's events and audio."""

    events: list[tuple[str, object]] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _note(self, name: str, value: object = None) -> None:
        self.events.append((name, value))
        self.changed.set()

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None:
        self._note("ringing", early_media)

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None:
        self._note("answered", remote_sdp)

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None:
        self._note("failed", code)

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        self._note("ended", reason)

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None:
        self.audio.append(pcm)

    def leg_digit(self, leg: SipLeg, digit: str) -> None:
        self._note("digit", digit)

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None:
        self._note("refer", target)

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None:
        self._note("notify", status)

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None:
        self._note("message", (body, content_type))

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None:
        self._note("hold", on_hold)

    async def wait(self, name: str, timeout: float = 10.0) -> object:
        async def find() -> object:
            while True:
                for n, v in self.events:
                    if n == name:
                        return v
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def heard(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.int16)


class SipPeer:
    """A user agent on 127.0.0.1 that answers every INVITE (after `ring_for` s) unless told to reject."""

    def __init__(self, answer: bool = True, reject: int | None = None, ring_for: float = 0.0) -> None:
        self.agent = SipAgent("127.0.0.1", 0)
        self.pool = PortPool(43000, 44000)
        self.answer = answer
        self.reject = reject
        self.ring_for = ring_for
        self.legs: list[tuple[SipLeg, Phone]] = []
        self.invites: list[Request] = []
        self.arrived = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        return f"sip:peer@127.0.0.1:{self.agent.port}"

    async def start(self) -> SipPeer:
        await self.agent.start()
        self.agent.on_invite = self._on_invite
        return self

    def _on_invite(self, request: Request, tx: ServerTransaction) -> None:
        phone = Phone()
        leg = SipLeg.incoming(self.agent, self.pool, phone, request, tx)
        self.legs.append((leg, phone))
        self.invites.append(request)
        self.arrived.set()
        task = asyncio.ensure_future(self._answer(leg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, leg: SipLeg) -> None:
        await leg.ringing(False)
        if self.ring_for:
            await asyncio.sleep(self.ring_for)
        if self.reject is not None:
            leg.reject(self.reject, "Busy Here")
        elif self.answer:
            await leg.accept()

    async def leg(self, index: int = 0, timeout: float = 10.0) -> tuple[SipLeg, Phone]:
        async def wait() -> tuple[SipLeg, Phone]:
            while len(self.legs) <= index:
                self.arrived.clear()
                await self.arrived.wait()
            return self.legs[index]

        return await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        for leg, _ in self.legs:
            leg.hangup()
        await asyncio.sleep(0.05)
        await self.agent.close()


@contextlib.asynccontextmanager
async def sip_peer(**kw: object) -> AsyncIterator[SipPeer]:
    peer = await SipPeer(**kw).start()  # type: ignore[arg-type]
    try:
        yield peer
    finally:
        await peer.close()


async def play_tone(leg: SipLeg, freq: float, seconds: float) -> None:
    """Send a tone on `leg` in real time, one 20 ms frame per tick."""
    samples = tone(freq, seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(0, len(samples) - 319, 320):
        leg.push(samples[i : i + 320])
        delay = start + (i // 320 + 1) * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
