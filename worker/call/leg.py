"""A call's leg: how the session reaches its peer, one implementation per call type.

The session picks its leg once, when it is created (`make_leg` in worker/call/session.py), and from then on
never asks which type of call it runs: set-up (`invite`, and for an inbound SIP call `accept` / `ringing` /
`reject`), the 20 ms frame out (`send`), ICE candidates, active-call's `message` and BYE headers, and the end
all go through the leg. What the peer does comes back through `LegHooks` callbacks: audio, key presses, the
answer, the end.

- `WebSocketLeg` (here): audio over the app's own socket, in the call's codec; answered at once.
- `RtcLeg` (worker/rtc/call_leg.py): a peer connection (worker/rtc/peer.py) answering the browser's offer.
- `SipCall` (worker/sip/call_leg.py): a SIP dialog, dialled out or attached to an inbound INVITE.

A leg with a peer of its own (WebRTC, SIP) says when that peer's audio first arrives (`FirstMedia`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from common import events
from worker.call.services import CallHooks
from worker.media.codecs import Codec, make_codec

if TYPE_CHECKING:
    from common.protocol import CallOption, Message, Ringing
    from worker.sip.leg import SipLeg

# Audio a client may send before `invite`; it is decoded once the call is set up.
MAX_EARLY_AUDIO = 256 * 1024


@dataclass(frozen=True, slots=True)
class LegHooks:
    """What a leg reports to its call, besides the call's own hooks."""

    call: CallHooks
    # The peer answered (the answer's SDP, empty for a WebSocket call): media flows from now on.
    answered: Callable[[str], Coroutine[Any, Any, None]]
    caller_audio: Callable[[np.ndarray], None]  # decoded caller audio, 16 kHz int16
    digit: Callable[[str], None]  # a key press the peer signalled (RFC 4733, SIP INFO)
    notified: Callable[[int, str], None]  # a NOTIFY of the progress of a REFER sent to the peer
    send_audio: Callable[[bytes], None]  # a message of audio to the app's socket


class CallLeg(Protocol):
    """What the session needs from its peer, whatever the call type."""

    # Named in teardown's log lines.
    name: str
    # An `invite` answered without waiting for the peer runs in line with the other commands.
    answers_at_once: bool
    # When the call first rang (ms): a SIP callee's first 18x, or the app's `ringing` of an inbound call.
    ring_ms: int | None

    @property
    def bound(self) -> bool:
        """A SIP dialog is bound to the call (an inbound INVITE attached, or a dial begun)."""
        ...

    async def check_invite(self, option: CallOption) -> bool:
        """Whether an `invite` with `option` may go on; if not, the client was told (and the call may end)."""
        ...

    def configure(self, option: CallOption) -> None:
        """The call option, before media flows (the WebSocket leg takes its codec)."""
        ...

    async def invite(self, option: CallOption) -> None:
        """Reach the peer; its answer comes through `LegHooks.answered` (or the call ends)."""
        ...

    async def accept(self) -> str | None:
        """Answer an inbound call: the answer's SDP, or None after telling the client why not."""
        ...

    async def ringing(self, cmd: Ringing) -> bool:
        """Ring an inbound call; False (the client told why) when there is nothing to ring."""
        ...

    def reject(self, code: int, reason: str) -> bool:
        """Refuse an inbound call; False (the client told why) when there is nothing to refuse."""
        ...

    async def candidate(self, line: str, sdp_mid: str | None, index: int | None) -> None:
        """A trickled ICE candidate."""
        ...

    def audio(self, data: bytes) -> None:
        """A message of caller audio from the app's socket."""
        ...

    def answered(self) -> None:
        """The call is answered (after `answer` went out)."""
        ...

    def send(self, frame: np.ndarray | None) -> None:
        """This tick's server-side frame (None: nothing plays)."""
        ...

    def sip_dialog(self) -> SipLeg | None:
        """The SIP dialog a bypass REFER goes through, if this leg is one."""
        ...

    def message(self, cmd: Message) -> None:
        """active-call's `message`: a SIP MESSAGE to the peer (its outcome, if bad, comes as an error)."""
        ...

    def bye_headers(self, headers: dict[str, str]) -> None:
        """Extra headers for the BYE that will end the call (`hangup.headers`); ignored but on SIP."""
        ...

    def close(self) -> object:
        """The call ends (may return an awaitable)."""
        ...


class FirstMedia:
    """active-call's `mediaReady{trackId: <call id>}`, once, at the first audio decoded from the peer (early
    media included). A `/call` socket's audio is the app's own: that leg has none."""

    __slots__ = ("_call", "seen")

    def __init__(self, call: CallHooks) -> None:
        self._call = call
        self.seen = False

    def __call__(self) -> None:
        self.seen = True
        if not self._call.ending():
            self._call.emit(events.event("mediaReady", track_id=self._call.call_id))


class NoPeerSetup:
    """The answers of a leg that has no inbound call to ring, accept or refuse, and no ICE."""

    hooks: LegHooks
    bound = False
    ring_ms: int | None = None

    async def accept(self) -> str | None:
        self.hooks.call.error("accept", "no pending call to accept", 400)
        return None

    async def ringing(self, cmd: Ringing) -> bool:
        self.hooks.call.error("ringing", "no pending call to ring (ringing answers an inbound SIP call)", 400)
        return False

    def reject(self, code: int, reason: str) -> bool:
        self.hooks.call.error("reject", "no pending call to reject", 400)
        return False

    async def candidate(self, line: str, sdp_mid: str | None, index: int | None) -> None:
        return  # RustPBX's first API sent candidates on every call type; nothing uses them there

    def audio(self, data: bytes) -> None:
        return  # the frontend drops socket audio on calls whose audio has a peer of its own

    def sip_dialog(self) -> SipLeg | None:
        return None

    def message(self, cmd: Message) -> None:
        # active-call's words, sender and all.
        self.hooks.call.error("command", "message command is only supported for SIP calls", 400)

    def bye_headers(self, headers: dict[str, str]) -> None:
        return  # active-call ignores them too: there is no BYE


class WebSocketLeg(NoPeerSetup):
    """A `/call` session: the app's socket carries the audio in the call's codec; `invite` answers at once."""

    name = "socket"
    answers_at_once = True

    def __init__(self, hooks: LegHooks) -> None:
        self.hooks = hooks
        self.codec: Codec = make_codec("pcm")
        self.live = False
        self._early = bytearray()
        self._early_overflow = False
        self._bad_audio = False

    async def check_invite(self, option: CallOption) -> bool:
        return True

    def configure(self, option: CallOption) -> None:
        self.codec = make_codec(option.codec)

    async def invite(self, option: CallOption) -> None:
        await self.hooks.answered("")

    def audio(self, data: bytes) -> None:
        if not self.live:
            if len(self._early) + len(data) > MAX_EARLY_AUDIO:
                if not self._early_overflow:
                    self._early_overflow = True
                    self.hooks.call.error(
                        "audio",
                        "audio sent before invite exceeds the "
                        f"{MAX_EARLY_AUDIO}-byte buffer; the excess was dropped",
                        413,
                    )
                return
            self._early += len(data).to_bytes(4, "little") + data
            return
        try:
            pcm = self.codec.decode(data)
        except Exception as exc:
            if not self._bad_audio:
                self._bad_audio = True
                self.hooks.call.error("audio", f"cannot decode {self.codec.name} audio: {exc}", 400)
            return
        self.hooks.caller_audio(pcm)

    def answered(self) -> None:
        self.live = True
        buf, self._early = self._early, bytearray()
        i = 0
        while i + 4 <= len(buf):
            n = int.from_bytes(buf[i : i + 4], "little")
            self.audio(bytes(buf[i + 4 : i + 4 + n]))
            i += 4 + n

    def send(self, frame: np.ndarray | None) -> None:
        if frame is not None:
            self.hooks.send_audio(self.codec.encode(frame))

    def close(self) -> None:
        return
