"""`refer`: transfer a call, by asking the SIP peer to do it (bypass REFER) or by bridging a second leg.

Bypass (`options.bypass: true`, SIP calls only): an in-dialog REFER (RFC 3515); its 202 and the NOTIFYs
that follow are reported as `ringing` / `answer` / `reject` with `refer: true`, and the peer usually ends
our dialog with a BYE once the transfer succeeds.

Bridged (every call type): the server dials the target as a new outbound SIP leg while `moh` plays on the
server-side track; when it answers, the leg's audio becomes the server-side track and the caller's audio
goes to the leg (`answer{trackId:"server-side-track", refer:true}`). No answer within `timeout` seconds →
`reject{code:408, refer:true}`. When the leg ends: `trackEnd` + `hangup{refer:true}`, and with
`autoHangup` (default) the whole call ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common import events
from common.protocol import Refer, ReferOption
from worker.call.services import CallHooks
from worker.media.player import BridgePlayer
from worker.sip.call_leg import leg_options
from worker.sip.leg import LegError, SipLeg
from worker.sip.message import Headers

if TYPE_CHECKING:
    from worker.sip.telephony import Telephony

log = logging.getLogger("pbx.worker.call.transfer")

DEFAULT_TIMEOUT = 30


@dataclass(frozen=True, slots=True)
class TransferTrack:
    """What a transfer does on the call's server-side track."""

    play_moh: Callable[[str], None]  # music on hold while the new leg rings
    end_moh: Callable[[], None]
    start_bridge: Callable[[BridgePlayer, int], None]  # the answered leg's audio (and its SSRC) plays
    end_bridge: Callable[[BridgePlayer], None]


class Transfer:
    """One `refer`. `dialog` is the call's own SIP dialog (a bypass REFER goes through it), if it has one."""

    def __init__(
        self,
        hooks: CallHooks,
        track: TransferTrack,
        cmd: Refer,
        telephony: Telephony | None,
        dialog: SipLeg | None,
    ) -> None:
        self.hooks = hooks
        self.track = track
        self.telephony = telephony
        self.dialog = dialog
        self.cmd = cmd
        self.options = cmd.options or ReferOption()
        self.target = cmd.target or cmd.callee or ""
        self.leg: SipLeg | None = None
        self.bridge: BridgePlayer | None = None  # leg → caller
        self.uplink = BridgePlayer()  # caller → leg
        self.answered_ms: int | None = None
        self.ring_ms: int | None = None  # the new leg's first 18x
        self.ended = False
        self._keep_call = False  # the app hung this leg up (`hangup {refer: true}`): the call goes on

    @property
    def auto_hangup(self) -> bool:
        return self.options.auto_hangup is not False

    def _emit(self, name: str, **fields: object) -> None:
        self.hooks.emit(events.event(name, track_id=self.hooks.server_track, refer=True, **fields))

    async def start(self) -> None:
        if self.options.bypass:
            await self._bypass()
        else:
            await self._bridge()

    # --- bypass ------------------------------------------------------------------------------------------

    async def _bypass(self) -> None:
        s = self.hooks
        leg = self.dialog
        if leg is None or leg.state != "confirmed":
            s.error("refer", "refer with bypass needs a connected SIP call (the peer does the transfer)", 400)
            self.ended = True
            return
        try:
            response = await leg.refer(self.target)
        except (LegError, ValueError) as exc:
            s.error("refer", str(exc), getattr(exc, "code", 400))
            self.ended = True
            return
        if response.status >= 300:
            self._emit("reject", reason=response.reason, code=response.status)
            self.ended = True
            return
        self._emit("ringing", early_media=False)

    def notified(self, status: int, reason: str) -> None:
        """A NOTIFY of our REFER's progress (its message/sipfrag status line)."""
        if self.ended or not self.options.bypass:
            return
        if status < 200:
            return
        self.ended = True
        if status < 300:
            self._emit("answer", sdp="")
        else:
            self._emit("reject", reason=reason, code=status)

    # --- bridged -----------------------------------------------------------------------------------------

    async def _bridge(self) -> None:
        s = self.hooks
        telephony = self.telephony
        assert telephony is not None  # the session checks before it starts a transfer
        try:
            headers, creds, contact = leg_options(self.options)  # type: ignore[arg-type]
        except ValueError as exc:
            s.error("refer", str(exc), 400)
            self.ended = True
            return
        h = Headers()
        for name, value in headers:
            h.add(name, value)
        h.add("X-Referred-Id", s.call_id)
        if self.options.moh:
            self.track.play_moh(self.options.moh)
        leg = SipLeg(telephony.agent, telephony.pool, self, "uac")
        self.leg = leg
        caller = self.cmd.caller or ""
        try:
            timeout = float(self.options.timeout or DEFAULT_TIMEOUT)
            admit = telephony.admit("refer.target", self.target)
            await leg.dial(caller, self.target, h, creds, timeout, contact, admit)
        except (LegError, OSError) as exc:
            s.error("refer", str(exc), getattr(exc, "code", 503))
            self._failed(getattr(exc, "code", 503), str(exc))

    def _failed(self, code: int, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self._emit("reject", reason=reason, code=code)
        self.track.end_moh()

    def caller_audio(self, pcm: np.ndarray) -> None:
        if self.bridge is not None:
            self.uplink.feed(pcm)

    def tick(self) -> None:
        if self.leg is not None and self.bridge is not None:
            frame = self.uplink.next_frame()
            if frame is not None:
                self.leg.push(frame)

    def close(self) -> None:
        self.ended = True
        if self.leg is not None:
            self.leg.hangup()

    def hang_up(self, reason: str, initiator: str) -> bool:
        """`hangup {refer: true}`: end this leg alone, dialling or connected, as its `hangup{refer:true}`
        says; the call goes on (its `autoHangup` is for a leg that ends by itself). False: no leg to end."""
        if self.ended:
            return False
        self._keep_call = True
        leg = self.leg
        self.leg_ended(leg, initiator, reason)  # type: ignore[arg-type]
        self.track.end_moh()
        if leg is not None:
            leg.hangup()
        return True

    # --- LegEvents of the new leg ------------------------------------------------------------------------

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None:
        now = events.now_ms()
        if self.ring_ms is None:
            self.ring_ms = now
        self._emit("ringing", timestamp=now, early_media=early_media)

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None:
        if self.ended:
            leg.hangup()
            return
        self.answered_ms = events.now_ms()
        self.bridge = BridgePlayer()
        self.track.start_bridge(self.bridge, leg.rtp.ssrc if leg.rtp else 0)
        self._emit("answer", sdp=remote_sdp)

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None:
        self._failed(code, "Timeout when refer" if code == 408 else reason)

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        s = self.hooks
        if self.bridge is not None:
            self.bridge.finished = True
            self.track.end_bridge(self.bridge)
        now = events.now_ms()
        self._emit(
            "hangup",
            timestamp=now,
            reason=reason,
            initiator=initiator,
            answer_time=events.rfc3339(self.answered_ms) if self.answered_ms else None,
            ringing_time=events.rfc3339(self.ring_ms) if self.ring_ms is not None else None,
            hangup_time=events.rfc3339(now),
        )
        if self.auto_hangup and not self._keep_call:
            s.spawn(s.hangup("refer", "system"), "refer-ended")

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None:
        if self.bridge is not None:
            self.bridge.feed(pcm)

    def leg_digit(self, leg: SipLeg, digit: str) -> None:
        self.hooks.emit(events.event("dtmf", track_id=self.hooks.server_track, digit=digit, refer=True))

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None: ...

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None: ...

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None:
        self._emit("message", body=body, content_type=content_type)

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None:
        self._emit("hold", on_hold=on_hold)
