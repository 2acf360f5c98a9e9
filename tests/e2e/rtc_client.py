"""A WebRTC caller for the end-to-end tests: an aiortc peer on loopback that sends a tone, keeps what it
hears, and can press keys as RFC 4733 telephone-events (which aiortc itself cannot send)."""

from __future__ import annotations

import asyncio
import fractions
import re
import time

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from worker.media.telephone_event import DIGITS, payload

# Loopback only: aioice leaves 127.0.0.1 out of its host candidates unless told otherwise.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

MIME = {"opus": "audio/opus", "g722": "audio/G722", "pcma": "audio/PCMA", "pcmu": "audio/PCMU"}


class ToneTrack(MediaStreamTrack):
    """A microphone that hums `freq` Hz for `seconds`, then is silent; paced at real time, 48 kHz."""

    kind = "audio"

    def __init__(self, freq: float, seconds: float, amplitude: float = 8000) -> None:
        super().__init__()
        self.freq, self.seconds, self.amplitude = freq, seconds, amplitude
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rate, size = 48000, 960
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._n / rate - time.monotonic()))
        t = (self._n + np.arange(size)) / rate
        loud = t < self.seconds
        samples = np.where(loud, np.sin(2 * np.pi * self.freq * t) * self.amplitude, 0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, rate)
        self._n += size
        return frame


class RtcCaller:
    def __init__(self, freq: float = 440.0, seconds: float = 1.0) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = ToneTrack(freq, seconds)
        self.transceiver = self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.heard: list[tuple[float, np.ndarray]] = []  # (arrival, 16 kHz samples)
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self._seq = 1000
        self._dtmf_ssrc = 0x5EED1234
        self.telephone_pt: int | None = None

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        try:
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):  # type: ignore[arg-type]
                    self.heard.append((time.monotonic(), out.to_ndarray().reshape(-1)))
        except MediaStreamError:
            pass

    def audio(self, after: float = 0.0) -> np.ndarray:
        parts = [a for t, a in self.heard if t >= after]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def offer(
        self, codec: str | None = None, telephone_event: int | None = 101, candidates: bool = True
    ) -> str:
        """The offer after ICE gathering; `codec` alone if given; telephone-event added; candidates kept
        out (to be trickled) when `candidates` is false."""
        if codec is not None:
            prefs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == MIME[codec]]
            self.transceiver.setCodecPreferences(prefs)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if telephone_event is not None:
            rate = 48000 if "opus/48000" in sdp else 8000
            sdp = re.sub(r"^(m=audio [^\r\n]*)", rf"\1 {telephone_event}", sdp, count=1, flags=re.M)
            sdp = sdp.replace(
                "a=rtpmap:", f"a=rtpmap:{telephone_event} telephone-event/{rate}\r\na=rtpmap:", 1
            )
            self.telephone_pt = telephone_event
        if not candidates:
            # A trickling peer sends neither its candidates nor end-of-candidates with the offer.
            sdp = "".join(
                line
                for line in sdp.splitlines(True)
                if not line.startswith(("a=candidate", "a=end-of-candidates"))
            )
        return sdp

    def candidates(self) -> list[str]:
        return [
            line[2:].strip()
            for line in self.pc.localDescription.sdp.splitlines()
            if line.startswith("a=candidate")
        ]

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def press(self, digits: str, duration_ms: int = 100) -> None:
        """Each key as RFC 4733 packets: a few updates, then three end packets. Browsers put them on the
        audio stream's SSRC; here they get one of their own, since SRTP needs one sequence per SSRC and
        aiortc's sender keeps its own to itself (the server reads them by payload type either way)."""
        assert self.telephone_pt is not None
        sender = self.transceiver.sender
        transport = sender.transport
        rate = (
            48000 if (self.transceiver._codecs and self.transceiver._codecs[0].clockRate == 48000) else 8000
        )
        for i, digit in enumerate(digits):
            timestamp = 90_000 * (i + 1)
            event = DIGITS.index(digit)
            steps = duration_ms // 20
            for step in range(steps + 3):
                end = step >= steps
                packet = RtpPacket(
                    payload_type=self.telephone_pt,
                    marker=1 if step == 0 else 0,
                    sequence_number=self._seq,
                    timestamp=timestamp,
                    ssrc=self._dtmf_ssrc,
                    payload=payload(event, end, min(step + 1, steps) * 20 * rate // 1000),
                )
                self._seq = (self._seq + 1) & 0xFFFF
                await transport._send_rtp(packet.serialize())
                await asyncio.sleep(0.02 if not end else 0.005)
            await asyncio.sleep(0.1)

    async def vanish(self) -> None:
        """Stop sending and answering anything, without a goodbye: the network dropped the peer."""
        await self.transceiver.sender.transport.transport.stop()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
