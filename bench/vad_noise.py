"""VAD on noise floors and speech onsets, per engine: the figures behind docs/protocol.md, "Noise floors".

    .venv/bin/python -m bench.vad_noise
    .venv/bin/python -m bench.vad_noise --engines webrtc --seeds 5 --seconds 5

Everything goes through a call's `VadProcessor` as the unit tests feed it (`tests/unit/test_vad.py`,
`judge_audio`: 20 ms frames, the real Silero batcher and TEN offload, time counted in audio).
Noise: each kind and level, after each lead (none, 0.5 s of digital silence, 1 s of -90 dBFS hiss), for
`--seeds` noise draws; prints how many runs gave `speaking`. Onsets: each clip (synthesised sentences after
1 s of silence, the Mandarin fixture when present) clean and over -45 dBFS white and pink floors; prints the
time from each speech onset (first 10 ms at or above -40 dBFS after 0.5 s below it, in the clean clip) to
the `speaking` decision, in ms.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from tests.audio_util import noise, onsets
from tests.unit.test_vad import (
    LEADS,
    NOISE_LEVELS,
    NOISES,
    judge_audio,
    lead,
    onset_clips,
    pcm,
)
from worker.media.vad import Speaking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", nargs="+", default=["webrtc", "silero", "ten"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    speech_clips = {name[:24]: clip for name, clip in onset_clips().items()}
    for engine in args.engines:
        runs = heard = 0
        where = []
        for kind, level, before, seed in itertools.product(NOISES, NOISE_LEVELS, LEADS, range(args.seeds)):
            audio = pcm(np.concatenate([lead(before), noise(kind, args.seconds, level, seed=1000 + seed)]))
            runs += 1
            if any(isinstance(e, Speaking) for e, _ in judge_audio(engine, audio)):
                heard += 1
                where.append(f"{kind} {level} after {before}")
        print(f"{engine}: noise -> speaking in {heard} of {runs} runs {where}")
        for floor in (None, ("white", -45), ("pink", -45)):
            late = []
            for clean in speech_clips.values():
                audio = clean.astype(np.float64)
                if floor is not None:
                    audio = audio + noise(floor[0], len(clean) / 16000, floor[1], seed=7)
                decided = [at for e, at in judge_audio(engine, pcm(audio)) if isinstance(e, Speaking)]
                for onset in onsets(clean):
                    after = [at - onset for at in decided if at >= onset - 40]
                    late.append(after[0] if after else None)
            name = "clean" if floor is None else f"{floor[0]} {floor[1]} dBFS"
            print(f"{engine}: onset -> speaking, {name}: {late} ms")


if __name__ == "__main__":
    main()
