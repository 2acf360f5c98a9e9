"""WebRTC calls: one aiortc peer connection per call (the only module that imports aiortc).

The peer connection answers the browser's offer with one audio track each way. Caller audio is decoded by
aiortc (on its receiver's thread), converted to 16 kHz mono and handed to the session's caller pipeline.
Server audio is one 20 ms frame per media-clock tick, silence when nothing plays, so the RTP stream
never stalls and its pacing is the clock's. RFC 4733 telephone-events, which aiortc neither negotiates
nor routes, are negotiated in the answer here and read off the DTLS transport before aiortc's RTP router
would drop them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.g711 import PcmEncoder
from aiortc.codecs.g722 import G722Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from common.config import Settings
from common.ice import parse_configured
from common.tasks import TaskSet
from worker import metrics
from worker.media.telephone_event import TelephoneEventDecoder
from worker.rtc import sdp as rtc_sdp

log = logging.getLogger("pbx.worker.rtc.peer")

FRAME = 320  # 20 ms at 16 kHz
OUT_QUEUE = 10  # frames the sender may fall behind before the oldest are dropped
_MIME = {"opus": "audio/opus", "g722": "audio/G722", "pcma": "audio/PCMA", "pcmu": "audio/PCMU"}


class RtcError(Exception):
    """The offer cannot be answered (no common codec, no ICE in time, a broken SDP)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def ice_servers(settings: Settings) -> list[RTCIceServer]:
    """The configured ICE servers (`ICE_SERVERS`); none by default: a peer offers only its own addresses."""
    servers = parse_configured(settings.ice_servers) or []
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in servers
    ]


def limit_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather host candidates only on these local addresses (`RTC_ADDRESSES`); aioice asks every interface."""
    if not addresses:
        return
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


# Encoders cheaper to run than to hand to a thread: aiortc sends every frame of every call through the
# loop's default executor to be encoded, and for G.711 the hop (~90 µs) costs several times the work
# (~12 µs). Opus (~140 µs with its resampling) stays on threads, off the media clock's loop.
_INLINE_ENCODERS = (PcmEncoder, G722Encoder)


class InlineEncoding(concurrent.futures.Executor):
    """A media process's default executor: cheap audio encoders run in place, the rest on `fallback`."""

    def __init__(self, fallback: concurrent.futures.Executor) -> None:
        self._fallback = fallback

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if isinstance(getattr(fn, "__self__", None), _INLINE_ENCODERS):
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as exc:
                done.set_exception(exc)
            return done
        return self._fallback.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._fallback.shutdown(wait, cancel_futures=cancel_futures)


class _ServerAudio(MediaStreamTrack):
    """The server-side track as aiortc's sender pulls it: whatever the media clock pushed, in order."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._pts = 0
        self.dropped = 0

    def push(self, frame: np.ndarray) -> None:
        if self._frames.qsize() >= OUT_QUEUE:
            self._frames.get_nowait()
            self.dropped += 1
            metrics.RTC_SENDER_DROPS.value += 1
        self._frames.put_nowait(frame)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = await self._frames.get()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = self._pts
        frame.time_base = Fraction(1, 16000)
        self._pts += len(samples)
        return frame


class RtcPeer:
    """One call's peer connection. Callbacks: caller audio (16 kHz int16), key presses, the end."""

    def __init__(
        self,
        call_id: str,
        settings: Settings,
        on_audio: Callable[[np.ndarray], None],
        on_digit: Callable[[str], None],
        on_end: Callable[[str, str], None],
    ) -> None:
        self.call_id = call_id
        self.settings = settings
        self.on_audio = on_audio
        self.on_digit = on_digit
        self.on_end = on_end
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(settings)))
        self.out = _ServerAudio()
        self.codec: str | None = None
        self._pending: list[RTCIceCandidate] = []
        self._described = False
        self._tasks = TaskSet(log, f"call:{call_id}:")
        self._telephone_pt: int | None = None
        self._dtmf = TelephoneEventDecoder()
        self.last_packet = time.monotonic()
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # --- signalling -----------------------------------------------------------------------------------------

    async def answer(self, offer: str, timeout: float, enable_ipv6: bool) -> str:
        """The answer SDP, after ICE gathering (bounded by `timeout`, the call's handshakeTimeout)."""
        if not offer.lstrip().startswith("v=0"):
            raise RtcError("option.offer: not an SDP offer (it must start with v=0)", 400)
        chosen = rtc_sdp.choose_codec(offer)
        if chosen is None:
            raise RtcError("option.offer: no audio codec this server speaks (Opus, G722, PCMA, PCMU)", 488)
        name, clock_rate = chosen
        # The transceiver exists before the offer is applied, so the codec preference shapes the answer.
        transceiver = self.pc.addTransceiver(self.out, direction="sendrecv")
        transceiver.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == _MIME[name].lower()
            ]
        )
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc raises assorted errors on SDP it cannot use
            raise RtcError(
                f"option.offer: not a usable SDP offer: {exc or type(exc).__name__}", 400
            ) from None
        if transceiver.mid is None:
            raise RtcError("option.offer: the offer has no audio", 488)
        self.codec = name
        self._described = True
        for candidate in self._pending:
            await self._add(candidate)
        self._pending.clear()
        self._watch_transport(transceiver)
        self._telephone_pt = rtc_sdp.telephone_event_pt(offer, clock_rate)
        try:
            async with asyncio.timeout(timeout):
                await self.pc.setLocalDescription(await self.pc.createAnswer())
        except TimeoutError:
            raise RtcError(
                f"ICE gathering did not finish within the handshake timeout ({timeout:g} s)", 408
            ) from None
        sdp = self.pc.localDescription.sdp
        if not enable_ipv6:
            sdp = rtc_sdp.strip_ipv6_candidates(sdp)
        if self.settings.public_ip:
            sdp = rtc_sdp.add_public_address(sdp, self.settings.public_ip)
        if self._telephone_pt is not None:
            sdp = rtc_sdp.add_telephone_event(sdp, self._telephone_pt, clock_rate)
        self._tasks.spawn(self._watchdog(), "rtc-watchdog")
        return sdp

    async def add_candidate(self, line: str, sdp_mid: str | None = None, index: int | None = None) -> None:
        """A trickled remote candidate (`candidate:…`, as a browser gives it); kept until the offer is set."""
        text = line.strip().removeprefix("a=").removeprefix("candidate:")
        if not text:
            return
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:
            raise ValueError(f"not an ICE candidate: {line!r}") from exc
        candidate.sdpMid = sdp_mid
        candidate.sdpMLineIndex = index if index is not None else (0 if sdp_mid is None else None)
        if self._described:
            await self._add(candidate)
        else:
            self._pending.append(candidate)

    async def _add(self, candidate: RTCIceCandidate) -> None:
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self.pc.addIceCandidate(candidate)

    # --- media ----------------------------------------------------------------------------------------------

    def push(self, frame: np.ndarray) -> None:
        """One 20 ms frame of server audio (or silence), at the media clock's tick."""
        self.out.push(frame)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.spawn(self._receive(track), "rtc-rx")

    async def _receive(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.last_packet = time.monotonic()
                assert isinstance(frame, av.AudioFrame)
                for out in resampler.resample(frame):
                    self.on_audio(out.to_ndarray().reshape(-1))

    def _watch_transport(self, transceiver: Any) -> None:
        """Read telephone-events before aiortc's router (which only knows the negotiated codec) drops them,
        and count every packet as a sign of life."""
        transport = transceiver.receiver.transport
        handle_rtp = transport._handle_rtp_data
        handle_rtcp = transport._handle_rtcp_data

        async def rtp(data: bytes, arrival_time_ms: int) -> None:
            self.last_packet = time.monotonic()
            if self._telephone_pt is not None and len(data) >= 12 and data[1] & 0x7F == self._telephone_pt:
                self._telephone_event(data)
                return
            await handle_rtp(data, arrival_time_ms)

        async def rtcp(data: bytes) -> None:
            self.last_packet = time.monotonic()
            await handle_rtcp(data)

        transport._handle_rtp_data = rtp
        transport._handle_rtcp_data = rtcp

    def _telephone_event(self, data: bytes) -> None:
        csrc = data[0] & 0x0F
        offset = 12 + 4 * csrc
        if data[0] & 0x10 and len(data) >= offset + 4:  # header extension
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        payload = data[offset:]
        if data[0] & 0x20 and payload:  # padding
            payload = payload[: -payload[-1]]
        digit = self._dtmf.feed(payload, int.from_bytes(data[4:8], "big"))
        if digit is not None:
            self.on_digit(digit)

    # --- the end --------------------------------------------------------------------------------------------

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("peer connection %s", state)
        if state == "failed":
            self._end("connection_failed", "system")
        elif state == "closed":
            self._end("connection_closed", "caller")

    async def _watchdog(self) -> None:
        """A peer that vanished sends nothing; ICE consent alone would take ~30 s to notice."""
        limit = self.settings.rtc_media_timeout
        while not self._closed:
            await asyncio.sleep(min(1.0, limit / 4))
            if time.monotonic() - self.last_packet > limit:
                self._end("media_timeout", "system")
                return

    def _end(self, reason: str, initiator: str) -> None:
        if not self._closed:
            self._closed = True
            self.on_end(reason, initiator)

    async def close(self) -> None:
        self._closed = True
        self.out.stop()
        self._tasks.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 2)
