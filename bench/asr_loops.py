"""Local ASR in a cut window: how often Whisper loops, and its word error rate, before and after the window
is padded with silence and the decoder penalises repeats (worker/speech/local_asr.py, `_transcribe`).

    .venv/bin/python -m bench.asr_loops
    .venv/bin/python -m bench.asr_loops --penalties 1.0 1.05 1.2    # the cut window with other penalties
    .venv/bin/python -m bench.asr_loops --no-speech                 # speech against noise bursts

Short: 10 phrases a bot hears while it speaks ("yeah", "hold on a second", "no, I said tomorrow", ...) in 3
voices (Piper's joe, joe fast, espeak-ng en-us+f2 where installed), each with 0.3 / 0.1, 0.1 / 0.1 and
0 / 0 s of -45 dBFS floor before / after it, as the VAD's cut hands them over. Long: 6 sentences of 14-17
words in 4 voices. Word error rate = (substitutions + insertions + deletions) / words said, letters only,
case folded; a clip "loops" when it comes out with more than twice its words and one.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.turn_eval import (
    BACKCHANNELS,
    COMPLETE,
    INCOMPLETE,
    INTERRUPTIONS,
    NOISES,
    _whisper,
    burst,
    on_floor,
    say,
    voices_here,
)
from worker.speech.local_asr import NO_SPEECH, _decode, _transcribe

SHORT = [
    "hold on a second",
    "yeah",
    "no, I said tomorrow",
    "I would like to book a table for two.",
    "stop, stop",
    "sorry, what was that?",
    "mm-hmm",
    "no, no, no, no",
    "okay",
    "can you repeat that?",
]
LONG = [
    "I would like to book a table for two at seven tonight, and could we sit near the window?",
    "My account number is four five six seven, and the card ends in one two three.",
    "The package arrived damaged yesterday, so I need a replacement or a refund please.",
    "Can you tell me when my order will arrive, because the tracking page has not changed since Monday?",
    "I need to change my delivery address to twelve Park Street, apartment three.",
    "That is all for today, thank you very much for your help, have a nice evening.",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


def errors(said: str, heard: str) -> int:
    """Word-level edit distance."""
    ref, hyp = words(said), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def before_the_change(model: Any, audio: np.ndarray, language: str | None) -> str:
    """The cut window as it was: the features padded with zeros, no repetition penalty."""
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    features = model.feature_extractor(audio.astype(np.float32) / 32768.0)
    window = int(np.ceil((features.shape[-1] + 100) / 500) * 500)
    padded = np.zeros((1, features.shape[0], window), dtype=np.float32)
    padded[0, :, : features.shape[-1]] = features
    encoded = model.model.encode(ctranslate2.StorageView.from_array(padded), to_cpu=False)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    result = model.model.generate(encoded, [prompt], beam_size=1, max_length=224, suppress_blank=True)
    return str(tokenizer.decode([t for t in result[0].sequences_ids[0] if t < tokenizer.eot])).strip()


def whole_window(model: Any, audio: np.ndarray, language: str | None) -> str:
    """The library's own path: a 30-s window, with its temperature fallback."""
    segments, _ = model.transcribe(
        audio.astype(np.float32) / 32768.0,
        language="en",
        beam_size=1,
        without_timestamps=True,
        condition_on_previous_text=False,
    )
    return " ".join(s.text.strip() for s in segments).strip()


def run(name: str, transcribe: Callable[[Any, np.ndarray, str | None], str]) -> None:
    model = _whisper()
    espeak = shutil.which("espeak-ng") is not None
    short_voices = ["joe", "joe fast", *(["espeak us f2"] if espeak else [])]
    long_voices = ["joe", "joe slow", *(["espeak us m3", "espeak gb m1"] if espeak else [])]
    for label, texts, voices, paddings in (
        ("short", SHORT, short_voices, [(0.3, 0.1), (0.1, 0.1), (0.0, 0.0)]),
        ("long", LONG, long_voices, [(0.3, 0.1)]),
    ):
        wrong = said = loops = clips = 0
        took = 0.0
        for text in texts:
            for voice in voices:
                for before, after in paddings:
                    audio, _, _ = on_floor(say(text, voice), before, after, seed=1)
                    began = time.perf_counter()
                    heard = transcribe(model, audio, "en")
                    took += time.perf_counter() - began
                    wrong += errors(text, heard)
                    said += len(words(text))
                    loops += len(words(heard)) > 2 * len(words(text)) + 1
                    clips += 1
        print(
            f"{name:28} {label:5}: {clips} clips, word error rate {wrong / said:.3f}, {loops} looping, "
            f"{took / clips * 1000:.0f} ms a clip (wall)"
        )


def no_speech() -> None:
    """Whisper's no-speech probability on speech (every phrase of bench/turn_eval.py and the long sentences,
    in every voice) and on 40 noise bursts; and the bursts that come out as words."""
    model = _whisper()
    speech: list[tuple[float, str]] = []
    for voice in voices_here():
        for text in COMPLETE + INCOMPLETE + BACKCHANNELS + INTERRUPTIONS + LONG:
            audio, _, _ = on_floor(say(text, voice), 0.3, 0.1, seed=5)
            speech.append((_decode(model, audio, "en")[1], f"{text!r} ({voice})"))
    speech.sort(reverse=True)
    noise: list[tuple[str, float]] = []
    for kind in NOISES:
        for seed in range(10):
            audio, _, _ = on_floor(burst(kind, seed), 0.3, 0.1, seed=700 + seed)
            noise.append(_decode(model, audio, "en"))
    p = [x for x, _ in speech]
    worded = sum(1 for t, _ in noise if t)
    kept = sum(1 for t, x in noise if t and x < NO_SPEECH)
    print(
        f"no speech, {len(speech)} speech clips: max {p[0]:.2f} ({speech[0][1]}), "
        f"p99 {np.percentile(p, 99):.2f}; {len(noise)} noise bursts: min {min(x for _, x in noise):.2f}, "
        f"{worded} with words, {kept} with words at NO_SPEECH {NO_SPEECH}"
    )


def main() -> None:
    import argparse

    from worker.speech import local_asr

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--penalties", nargs="*", type=float, default=[], help="other repetition penalties")
    parser.add_argument("--no-speech", action="store_true", help="only the no-speech probabilities")
    args = parser.parse_args()
    if args.no_speech:
        no_speech()
        return
    run("cut window, before", before_the_change)
    run("cut window, now", _transcribe)
    run("the library's 30-s window", whole_window)
    for penalty in args.penalties:
        local_asr.REPETITION_PENALTY = penalty
        run(f"cut window, penalty {penalty}", _transcribe)


if __name__ == "__main__":
    main()
