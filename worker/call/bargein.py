"""Barge-in that is not fooled (`option.vad.bargeIn`): is the caller's sound while the bot speaks an
interruption, or a backchannel ("yeah", "uh-huh"), a cough, a blip?

`BargeInRule` decides on the caller's audio clock (pure, unit-tested on a virtual clock); `BargeIn` is a
call's part that feeds it from the call's VAD and ASR and, with `act: "interrupt"`, acts on the
server-side track: paused the moment the caller starts speaking over it, then interrupted, or resumed
where it paused.

The rule, for one utterance that starts while the server-side track plays:
- it ends (VAD) shorter than `minSpeechMs`, or the VAD drops it as a blip: `ignore` (or `resume`), "short";
- with ASR: its words decide. Any word outside `ignoreWords` (a question, "wait", "stop"): `interrupt`,
  "words", as soon as an interim or final result has one and the utterance has lasted `minSpeechMs`;
  a final of only backchannel words: `ignore`/`resume`, "backchannel"; an empty final: "noise"; no final
  within `resumeAfterMs` of the utterance's end: `ignore`/`resume`, "no_words";
- without ASR: `interrupt`, "speech", once it has lasted `minSpeechMs`.
`resume` is `ignore` when the server had paused the track for the utterance (with `act`), and it plays on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import events
from common.protocol import BargeInOption

if TYPE_CHECKING:
    from worker.call.tracks import ServerSide, ServerTrack

DEFAULT_MIN_SPEECH_MS = 300
DEFAULT_RESUME_AFTER_MS = 1500
# ASR and VAD place an utterance's start apart by up to this (local ASR: the same VAD, 0).
ONSET_SLACK_MS = 300
# Backchannels and fillers: an utterance made only of these does not take the turn.
BACKCHANNELS = frozenset(
    "yeah yes yep yup ya yea ok okay k uh-huh uh huh um umm hmm hm mm mmm mhm mm-hmm mmhmm right sure "
    "alright all i see got it cool great nice oh ah aha wow really true exactly totally gotcha".split()
)
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")
# Hums and fillers have no fixed spelling ("Mmm", "M. M.", "uhhh", "hmmm"): any run of these letters counts.
_HUM = re.compile(r"^(?:m+|h+m+|u+h*|a+h+|o+h+|e+r*m*|u+m+)(?:-(?:m+|h+m+|u+h*))*$")


def words(text: str) -> list[str]:
    """Lower-case words of a transcript, punctuation dropped, hyphenated words kept whole."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: str  # interrupt | ignore | resume
    reason: str  # short | words | backchannel | noise | no_words | speech
    start_ms: int
    text: str | None = None


class BargeInRule:
    """One utterance at a time; ms on the caller's audio clock."""

    def __init__(self, min_speech_ms: int, resume_after_ms: int, ignore: frozenset[str], asr: bool) -> None:
        self.min_speech_ms = min_speech_ms
        self.resume_after_ms = resume_after_ms
        self.ignore = ignore
        self.asr = asr
        self.start: int | None = None  # the utterance being judged
        self.paused = False  # the track was paused for it
        self._ended: int | None = None
        self._now = 0

    def speech(self, ts_ms: int, bot_playing: bool, pause: bool) -> bool:
        """The caller starts speaking; True: pause the track now (it plays, and `pause` asks for it)."""
        if self.start is not None or not bot_playing:
            return False
        self.start = ts_ms
        self._ended = None
        self.paused = pause
        return pause

    def ended(self, ts_ms: int, duration_ms: int | None) -> Verdict | None:
        """The utterance ended (None: the VAD dropped it as a blip)."""
        if self.start is None:
            return None
        if duration_ms is None or duration_ms < self.min_speech_ms:
            return self._verdict("short")
        if not self.asr:
            return self._verdict("speech", interrupt=True)
        self._ended = ts_ms
        return None

    def heard(self, text: str, final: bool, start_ms: int | None = None) -> Verdict | None:
        """A transcript; one of an utterance that began before the judged one (`start_ms`, when the
        provider says) is not about it."""
        if self.start is None or (start_ms is not None and start_ms < self.start - ONSET_SLACK_MS):
            return None
        said = words(text)
        taken = [w for w in said if w not in self.ignore and not _HUM.match(w)]
        if taken and (final or self._now - self.start >= self.min_speech_ms):
            return self._verdict("words", interrupt=True, text=text)
        if not final:
            return None
        return self._verdict("backchannel" if said else "noise", text=text or None)

    def tick(self, ts_ms: int) -> Verdict | None:
        self._now = ts_ms
        if self.start is None:
            return None
        if not self.asr and self._ended is None and ts_ms - self.start >= self.min_speech_ms:
            return self._verdict("speech", interrupt=True)
        if self._ended is not None and ts_ms - self._ended >= self.resume_after_ms:
            return self._verdict("no_words")
        return None

    def _verdict(self, reason: str, *, interrupt: bool = False, text: str | None = None) -> Verdict:
        assert self.start is not None
        decision = "interrupt" if interrupt else ("resume" if self.paused else "ignore")
        verdict = Verdict(decision, reason, self.start, text)
        self.start = None
        self._ended = None
        self.paused = False
        return verdict


class BargeIn:
    """A call's barge-in judge: told of the caller's speech and words, it emits `bargeIn` and may act on the
    server-side track (`ServerSide`, worker/call/tracks.py)."""

    def __init__(
        self,
        option: BargeInOption,
        asr: bool,
        side: ServerSide,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        if option.ignore_words is not None:
            ignore = frozenset(w for t in option.ignore_words for w in words(t))
        else:
            ignore = BACKCHANNELS
        self.act = (option.act or "event").lower() == "interrupt"
        self.rule = BargeInRule(
            DEFAULT_MIN_SPEECH_MS if option.min_speech_ms is None else option.min_speech_ms,
            DEFAULT_RESUME_AFTER_MS if option.resume_after_ms is None else option.resume_after_ms,
            ignore,
            asr,
        )
        self._side = side
        self._emit = emit
        self._paused: ServerTrack | None = None  # the track this part paused for the utterance

    def speech_started(self, ts_ms: int) -> None:
        track = self._side.track
        playing = track is not None and not track.paused
        if self.rule.speech(ts_ms, playing, self.act):
            self._paused = track
            self._side.pause(True)

    def speech_ended(self, ts_ms: int, duration_ms: int | None) -> None:
        self._apply(self.rule.ended(ts_ms, duration_ms))

    def transcript(self, text: str, final: bool, start_ms: int | None = None) -> None:
        self._apply(self.rule.heard(text, final, start_ms))

    def tick(self, ts_ms: int) -> None:
        self._apply(self.rule.tick(ts_ms))

    def _apply(self, verdict: Verdict | None) -> None:
        if verdict is None:
            return
        side, paused = self._side, self._paused
        self._paused = None
        # The decision first, then what it does (the interrupted track's `trackEnd`).
        self._emit(
            events.event(
                "bargeIn",
                track_id=side.track_id,
                decision=verdict.decision,
                reason=verdict.reason,
                start_time=verdict.start_ms,
                text=verdict.text,
            )
        )
        track = side.track
        # Only the track this part paused, or one playing: a track the client paused stays as it is.
        if self.act and track is not None and (track is paused or not track.paused):
            if verdict.decision == "interrupt":
                side.interrupt()
            elif verdict.decision == "resume" and track is paused:
                side.pause(False)
