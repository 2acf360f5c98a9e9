"""A WebRTC caller built on aiortc (the only module of this library that imports aiortc and av).

`RtcPeer` makes the offer, takes the answer, sends a microphone fed by `send` (silence when it has
nothing) and hands what it hears, resampled to 16 kHz mono, to a callback. `WebRtcCall` is a `Call` whose
audio goes through such a peer: `Client.webrtc_call()` builds both.

ICE: host candidates of this machine's interfaces (aioice leaves 127.0.0.1 out), plus what `ice_servers`
give. Candidates are in the offer (no trickle).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from pbxclient.audio import AudioFrame, as_samples, resample
from pbxclient.call import Call

if TYPE_CHECKING:
    from pbxclient.client import Client, IceServer

log = logging.getLogger("pbxclient.rtc")

RATE = 16000
FRAME = RATE // 50  # 20 ms
MIME = {"opus": "audio/opus", "g722": "audio/G722", "pcma": "audio/PCMA", "pcmu": "audio/PCMU"}


class Microphone(MediaStreamTrack):
    """An audio track that plays the samples queued with `push` (16 kHz int16), and silence in between,
    one 20 ms frame at a time in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._queued = 0
        self._sent = 0
        self._start: float | None = None

    @property
    def queued(self) -> int:
        """Samples waiting to be sent."""
        return self._queued

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self._queue.append(samples.astype(np.int16, copy=False))
            self._queued += len(samples)

    def clear(self) -> None:
        self._queue.clear()
        self._queued = 0

    def _take(self) -> np.ndarray:
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        while filled < FRAME and self._queue:
            head = self._queue[0]
            n = min(FRAME - filled, len(head))
            out[filled : filled + n] = head[:n]
            filled += n
            if n == len(head):
                self._queue.popleft()
            else:
                self._queue[0] = head[n:]
        self._queued -= filled
        return out

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._sent / RATE - loop.time()))
        frame = av.AudioFrame.from_ndarray(self._take().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


class RtcPeer:
    """One aiortc peer connection with a `Microphone`. `codec` (`opus`, `g722`, `pcma`, `pcmu`) limits the
    offer to that codec; `on_audio` gets each received frame (16 kHz)."""

    def __init__(self, *, ice_servers: Sequence[IceServer] = (), codec: str | None = None) -> None:
        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in ice_servers
        ]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.microphone = Microphone()
        self.transceiver = self.pc.addTransceiver(self.microphone, direction="sendrecv")
        if codec is not None:
            prefs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == MIME[codec]]
            self.transceiver.setCodecPreferences(prefs)
        self.on_audio: Callable[[AudioFrame], None] | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self.listening = False
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.listening = True
            self._listeners.append(asyncio.create_task(self._listen(track), name="rtc:listen"))

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):  # type: ignore[arg-type]
                    if self.on_audio is not None:
                        self.on_audio(AudioFrame(out.to_ndarray().reshape(-1).copy(), RATE, at=loop.time()))
        except MediaStreamError:
            pass
        except Exception:
            log.exception("the peer's audio stopped")
        finally:
            self.listening = False

    async def offer(self) -> str:
        """The SDP offer, once ICE gathering is complete."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        """Apply the server's SDP answer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        for task in self._listeners:
            task.cancel()
        for task in self._listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.microphone.stop()
        await self.pc.close()


class WebRtcCall(Call):
    """A `/call/webrtc` call whose audio goes through `peer`: `send_audio` feeds its microphone, `audio()`
    gives what it hears (track None; `option.subscribe` frames from the socket come with track 0 or 1).
    Closing the call closes the peer."""

    def __init__(
        self,
        client: Client,
        path: str,
        call_id: str,
        params: dict[str, str],
        peer: RtcPeer,
        audio_frames: int,
    ) -> None:
        super().__init__(client, path, call_id, params, "pcm", audio_frames)
        self.peer = peer
        peer.on_audio = self._push_audio

    @property
    def sample_rate(self) -> int:
        return RATE

    @property
    def receive_rate(self) -> int:
        return RATE

    def _audio_open(self) -> bool:
        return self.peer.listening and self._state != "closed"

    async def send_audio(
        self,
        pcm: np.ndarray | bytes | AudioFrame,
        sample_rate: int | None = None,
        pace: bool = True,
    ) -> None:
        """Queue audio on the peer's microphone (16 kHz unless `sample_rate` or the frame says otherwise);
        with `pace`, return once all but the last 100 ms of it have been sent."""
        samples, rate = as_samples(pcm)
        rate = sample_rate or rate or RATE
        self.peer.microphone.push(resample(samples, rate, RATE) if rate != RATE else samples)
        while pace and self.peer.microphone.queued > RATE // 10:
            self._socket()  # raises if the call went away meanwhile
            await asyncio.sleep(0.02)

    async def flush_audio(self, pace: bool = True) -> None:
        """Nothing to flush: the microphone sends partial frames padded with silence."""

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.peer.close()
