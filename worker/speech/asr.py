"""Speech recognition providers behind one interface.

A provider gets the caller's audio as 20 ms frames (int16, 16 kHz) through `feed`, never blocks the event
loop, and reports through two callbacks: `on_result(Transcript)` for interim and final text, and
`on_error(ProviderError)` when it cannot connect or fails mid-call (after which it stops; the call goes on).
The session turns transcripts into `asrDelta` / `asrFinal` and `metrics` events.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.errors import ProviderError
from common.protocol import TranscriptionOption
from worker.speech.context import SpeechContext


@dataclass(frozen=True, slots=True)
class Transcript:
    """One result: `final` closes sentence `index`; times are epoch ms (None when the provider has none)."""

    text: str
    index: int
    final: bool
    start_ms: int | None = None
    end_ms: int | None = None


AsrContext = SpeechContext

ResultCallback = Callable[[Transcript], None]
ErrorCallback = Callable[[ProviderError], None]


class AsrClient(abc.ABC):
    """Base of every provider."""

    provider: str = ""

    def __init__(
        self,
        option: TranscriptionOption,
        context: AsrContext,
        on_result: ResultCallback,
        on_error: ErrorCallback,
    ) -> None:
        self.option = option
        self.context = context
        self.on_result = on_result
        self.on_error = on_error

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin (connect, load); failures are reported through on_error, not raised."""

    @abc.abstractmethod
    def feed(self, frame: np.ndarray, ts_ms: int) -> None:
        """One 20 ms frame of caller audio, stamped (epoch ms) on the call's audio clock; returns at once."""

    def speech_started(self, start_ms: int) -> None:  # noqa: B027 - optional hook
        """The VAD found speech (used by providers that transcribe per utterance)."""

    def speech_ended(self, start_ms: int, end_ms: int) -> None:  # noqa: B027 - optional hook
        """The VAD closed an utterance (used by providers that transcribe per utterance)."""

    def speech_discarded(self) -> None:  # noqa: B027 - optional hook
        """What the VAD took for speech was too short to be an utterance."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop and release everything; idempotent."""
