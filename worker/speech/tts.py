"""Speech synthesis providers behind one streaming interface: text in, s16le PCM chunks (and subtitles) out.

A provider is built per `tts` command (or per streaming track) from the call's `tts` option merged with the
command's. `synthesize(text)` is the one-shot form; providers with a native streaming protocol also offer
`stream(texts)`, which takes text pieces (LLM tokens) from an async iterator over one provider session.
Both are async generators yielding `TtsAudio` (mono int16 at the provider's rate; the player resamples)
and `TtsSubtitles`; they raise `ProviderError` (`ProviderRefused` for the provider's own error answers)
and close their connections when the consumer stops iterating (interrupt, hangup).
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from common.protocol import SynthesisOption
from worker.speech.context import SpeechContext


@dataclass(frozen=True, slots=True)
class Subtitle:
    """One word or character of the synthesized text and where it is in the audio (ms from its start)."""

    text: str
    begin_ms: int
    end_ms: int
    begin_index: int
    end_index: int


@dataclass(frozen=True, slots=True)
class TtsAudio:
    samples: np.ndarray  # int16, mono
    rate: int


@dataclass(frozen=True, slots=True)
class TtsSubtitles:
    items: tuple[Subtitle, ...]


TtsOutput = TtsAudio | TtsSubtitles


TtsContext = SpeechContext


class TtsProvider(abc.ABC):
    """Base of every provider. `option` is already merged (call ⊕ command); `option.speaker` is the voice."""

    name: str = ""
    # A native streaming session (Tencent's TextToStreamAudioWSv2); others get text sentence by sentence.
    native_streaming: bool = False

    def __init__(self, option: SynthesisOption, context: TtsContext) -> None:
        self.option = option
        self.context = context

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise ProviderRefused (code 400) for an option the provider cannot work with, before any I/O."""

    @property
    def rate(self) -> int:
        """The sample rate the provider is asked for (`samplerate`, default 16 kHz)."""
        return self.option.samplerate or 16000

    @abc.abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[TtsOutput]:
        """Speak one text; yields audio as soon as the provider has it."""

    def stream(self, texts: AsyncIterator[str]) -> AsyncIterator[TtsOutput]:
        """Speak text that arrives in pieces, over one provider session (only if `native_streaming`)."""
        raise NotImplementedError(f"{self.name} has no streaming session")


# Pictographs, dingbats, flags, keycaps and the joiners/selectors that build emoji sequences.
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"
    "\U00002600-\U000027bf"
    "\U00002b00-\U00002bff"
    "\U0001f1e6-\U0001f1ff"
    "\U000e0020-\U000e007f"
    "\u200d\ufe0e\ufe0f\u20e3"
    "]+"
)


def strip_emoji(text: str) -> str:
    """Text without emoji, which providers would read out or choke on (RustPBX strips them too), and
    without the space an emoji leaves before punctuation or beside another space."""
    if not _EMOJI.search(text):
        return text
    text = _EMOJI.sub("", text)
    return re.sub(r"[ \t]+([,.!?;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text))


# A sentence ends at . ! ? ; (and their CJK forms) followed by space or the end, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])|\n+")


# Streamed text held this long (characters) without a sentence end is cut at its last space and spoken:
# an unpunctuated stream (a list, a run-on reply) is not held back to its end.
MAX_UNENDED = 300


class SentenceSplitter:
    """Cuts streamed text (LLM tokens) into sentences, for providers that speak one text at a time.

    The work per piece is about its own length (a stream can bring thousands of pieces a second): a piece
    is searched for a sentence end together with the last character before it, the held text is joined
    only when one is found, and it is never longer than MAX_UNENDED."""

    def __init__(self) -> None:
        self._held: list[str] = []
        self._size = 0
        self._last = ""  # the held text's last character: an end's lookbehind may need it

    def push(self, text: str) -> list[str]:
        if not text:
            return []
        self._held.append(text)
        self._size += len(text)
        ended = _SENTENCE_END.search(self._last + text) is not None
        self._last = text[-1]
        if not ended and self._size <= MAX_UNENDED:
            return []
        parts = _SENTENCE_END.split("".join(self._held))
        rest = parts.pop()
        if len(rest) > MAX_UNENDED:
            cut = rest.rfind(" ") + 1 or len(rest)
            parts.append(rest[:cut])
            rest = rest[cut:]
        self._held = [rest] if rest else []
        self._size = len(rest)
        self._last = rest[-1:]
        return [p.strip() for p in parts if p.strip()]

    def flush(self) -> list[str]:
        rest = "".join(self._held).strip()
        self._held, self._size, self._last = [], 0, ""
        return [rest] if rest else []
