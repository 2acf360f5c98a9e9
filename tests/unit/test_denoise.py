"""RNNoise on 16 kHz frames: noise goes, speech and tones stay."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tests.audio_util import peak_freq, rms, tone
from tests.speech import speech
from worker.media.denoise import Denoiser
from worker.media.offload import FrameBatcher


def run(d: Denoiser, x: np.ndarray) -> np.ndarray:
    return np.concatenate([d.process(x[i : i + 320]) for i in range(0, len(x) - 319, 320)])


def test_white_noise_is_removed_and_speech_kept() -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(32000) * 1500).astype(np.int16)
    out = run(Denoiser(), noise)
    assert len(out) == len(noise)
    assert 20 * np.log10(rms(out[8000:]) / rms(noise[8000:])) < -20
    voice = speech("Hello there, this is a test of the noise reduction.")
    noisy = np.clip(voice.astype(np.int32) + rng.standard_normal(len(voice)) * 1500, -32768, 32767).astype(
        np.int16
    )
    cleaned = run(Denoiser(), noisy)
    assert abs(20 * np.log10(rms(cleaned) / rms(voice))) < 3


def test_tone_keeps_its_frequency() -> None:
    out = run(Denoiser(), tone(440, 1.0))
    assert abs(peak_freq(out[4000:]) - 440) < 5


def test_batcher_returns_frames_in_order_per_call() -> None:
    async def main() -> list[tuple[int, int]]:
        pool = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()

        def off(fn: Any, *a: Any) -> Any:
            return loop.run_in_executor(pool, fn, *a)

        batcher = FrameBatcher("denoise", off)
        runner = asyncio.create_task(batcher.run())
        got: list[tuple[int, int]] = []
        a, b = Denoiser(), Denoiser()
        for i in range(10):
            batcher.submit(a, a.process, tone(300, 0.02), i, lambda f, ts: got.append((1, ts)))
            batcher.submit(b, b.process, tone(300, 0.02), i, lambda f, ts: got.append((2, ts)))
            if i % 3 == 0:
                batcher.kick()
                await asyncio.sleep(0.01)
        batcher.kick()
        for _ in range(100):
            if len(got) == 20:
                break
            await asyncio.sleep(0.01)
        runner.cancel()
        pool.shutdown()
        return got

    got = asyncio.run(main())
    assert [ts for k, ts in got if k == 1] == list(range(10))
    assert [ts for k, ts in got if k == 2] == list(range(10))


def test_backlog_is_bounded(monkeypatch: Any) -> None:
    import worker.media.offload as offload

    monkeypatch.setattr(offload, "MAX_BACKLOG", 100)

    async def main() -> None:
        batcher = FrameBatcher("t", lambda fn, *a: asyncio.sleep(0))
        for i in range(1000):
            batcher.submit(object(), lambda f: f, np.zeros(1), i, lambda r, ts: None)
        assert len(batcher._queue) <= 100 and batcher.dropped >= 900

    asyncio.run(main())
