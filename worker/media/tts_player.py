"""The server-side TTS track's playout: segments (one per `tts` command or streamed sentence) played strictly
in order, each as its audio arrives, 20 ms at a time.

Synthesis fills segments from another task; the media clock pulls frames. A segment still waiting for audio
holds the track (nothing is sent), so commands synthesized out of order still play in order, and what was
played is counted per segment: that count is what the caller heard, which `interruption.current` reports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from worker.media.resample import RateConverter
from worker.speech.tts import Subtitle

FRAME = 320  # 20 ms at 16 kHz


@dataclass(slots=True, eq=False)
class Segment:
    """One text's audio at 16 kHz, growing while it is synthesized."""

    seq: int | None
    text: str
    audio: bytearray = field(default_factory=bytearray)
    played: int = 0  # samples sent to the caller
    done: bool = False  # no more audio will come
    failed: bool = False  # synthesis failed: the track ends when playback reaches this segment
    subtitles: list[Subtitle] = field(default_factory=list)
    _converter: RateConverter | None = None

    @property
    def received(self) -> int:
        return len(self.audio) // 2

    def add(self, samples: np.ndarray, rate: int) -> None:
        if rate != 16000:
            if self._converter is None or self._converter.src != rate:
                self._converter = RateConverter(rate)
            samples = self._converter.process(samples)
        self.audio += samples.astype("<i2", copy=False).tobytes()

    def finish(self) -> None:
        if self._converter is not None:
            self.audio += self._converter.flush().astype("<i2", copy=False).tobytes()
            self._converter = None
        self.done = True

    def position(self) -> int | None:
        """`begin_index` of the last subtitle that had begun by the point the caller heard."""
        heard_ms = self.played * 1000 // 16000
        begun = [s.begin_index for s in self.subtitles if s.begin_ms < heard_ms]
        return begun[-1] if begun else None


class TtsPlayer:
    """Frames for the media clock; `finished` once every segment is played and no more can come."""

    def __init__(self) -> None:
        self.segments: deque[Segment] = deque()
        self.paused = False
        # More segments may still be added (until the track is drained, or until endOfStream for streaming).
        self.open_input = False
        self.closing = False  # graceful interrupt: the current segment finishes, nothing else plays
        self.frames_sent = 0
        self.current: Segment | None = None  # the segment being played, or last played

    def add(self, segment: Segment) -> None:
        if not self.closing:
            self.segments.append(segment)

    @property
    def finished(self) -> bool:
        if self.segments:
            head = self.segments[0]
            return head.failed and head.done and head.played >= head.received
        return not self.open_input

    def next_frame(self) -> np.ndarray | None:
        """The next 20 ms, or None when nothing is ready (waiting for audio, or finished)."""
        while self.segments:
            seg = self.segments[0]
            self.current = seg
            left = seg.received - seg.played
            if left >= FRAME or (seg.done and left > 0):
                start = seg.played * 2
                chunk = np.frombuffer(bytes(seg.audio[start : start + FRAME * 2]), dtype="<i2")
                seg.played += len(chunk)
                self.frames_sent += 1
                if len(chunk) < FRAME:
                    chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
                return chunk
            if not seg.done or seg.failed:
                return None
            self.segments.popleft()
            if self.closing:
                self.segments.clear()
                self.open_input = False
        return None

    def graceful_stop(self) -> None:
        """Let the segment being played finish; drop the rest and take nothing more."""
        self.closing = True
        self.open_input = False
        while len(self.segments) > 1:
            self.segments.pop()

    def interruption(self) -> dict[str, object] | None:
        """The fields of an `interruption` event for the segment being played, if anything was synthesized."""
        seg = self.segments[0] if self.segments else self.current
        if seg is None:
            return None
        return {
            "subtitle": seg.text,
            "current": seg.played * 1000 // 16000,
            "total_duration": seg.received * 1000 // 16000,
            "position": seg.position(),
        }
