"""The leg of a `/call/webrtc` session: the browser's peer connection (worker/rtc/peer.py) as a `CallLeg`."""

from __future__ import annotations

import numpy as np

from common.config import Settings
from common.protocol import CallOption
from worker.call.leg import FirstMedia, LegHooks, NoPeerSetup
from worker.media.player import SILENT_FRAME
from worker.rtc.peer import RtcError, RtcPeer


class RtcLeg(NoPeerSetup):
    """Answers the browser's offer at `invite`; candidates trickled before it wait until the peer exists."""

    name = "peer connection"
    answers_at_once = False

    def __init__(self, hooks: LegHooks, settings: Settings) -> None:
        self.hooks = hooks
        self.settings = settings
        self.peer: RtcPeer | None = None
        self.live = False
        self.first_media = FirstMedia(hooks.call)
        self._candidates: list[tuple[str, str | None, int | None]] = []  # trickled before the offer

    async def check_invite(self, option: CallOption) -> bool:
        if not option.offer:
            self.hooks.call.error(
                "invite", "option.offer: required for a WebRTC call (the browser's SDP offer)", 400
            )
            await self.hooks.call.hangup("failed", "system")
            return False
        return True

    def configure(self, option: CallOption) -> None:
        return  # the codec is the one the offer and answer agree on

    async def invite(self, option: CallOption) -> None:
        answer = await self._answer(option)
        if answer is not None:
            await self.hooks.answered(answer)

    async def _answer(self, option: CallOption) -> str | None:
        """The peer connection's answer, or None after telling the client why there is none."""
        call = self.hooks.call
        peer = RtcPeer(call.call_id, self.settings, self._audio, self.hooks.digit, self._ended)
        self.peer = peer
        try:
            for line, mid, index in self._candidates:
                await peer.add_candidate(line, mid, index)
            self._candidates.clear()
            assert option.offer is not None  # check_invite refused the invite without one
            return await peer.answer(option.offer, option.handshake_seconds(), bool(option.enable_ipv6))
        except RtcError as exc:
            call.error("invite", str(exc), exc.code)
        except ValueError as exc:
            call.error("invite", str(exc), 400)
        await call.hangup("failed", "system")
        return None

    def _audio(self, pcm: np.ndarray) -> None:
        if not self.first_media.seen:
            self.first_media()
        self.hooks.caller_audio(pcm)

    async def candidate(self, line: str, sdp_mid: str | None, index: int | None) -> None:
        if self.peer is None:
            self._candidates.append((line, sdp_mid, index))
            return
        try:
            await self.peer.add_candidate(line, sdp_mid, index)
        except ValueError as exc:
            self.hooks.call.error("candidate", str(exc), 400)

    def _ended(self, reason: str, initiator: str) -> None:
        self.hooks.call.spawn(self.hooks.call.hangup(reason, initiator), "rtc-ended")

    def answered(self) -> None:
        self.live = True

    def send(self, frame: np.ndarray | None) -> None:
        # Silence too: an RTP stream keeps its pace and timestamps whether or not anything plays.
        if self.peer is not None and self.live:
            self.peer.push(SILENT_FRAME if frame is None else frame)

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close()
