"""Warming a media process up before it takes calls.

Every model a call may use without a cloud provider is loaded and run once on dummy input: the Piper voice,
Whisper, Silero, TEN, RNNoise, the WebRTC VAD and the DTMF classifier. Loaded lazily, they made the first
call of a fresh process pay: about a second before its first `tts` audio, where a warm process takes 0.2 s.
(The Smart Turn model is the exception: loaded when the process's first smart_turn call is set up, ~55 MiB
that a process whose calls never ask for it does without; only the `onnx` package it is rewritten with is
imported here, the 0.65 s of that load that stalled the loop.)
Each step runs on the thread that runs that model for calls (ONNX Runtime and CTranslate2 set their buffers
up on first use, per thread and per input size), never on the event loop, and the steps run side by side.

A step that fails is logged and passed over: a call that needs that model then gets the error it would have
got anyway, and the rest of the process serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np

log = logging.getLogger("pbx.worker.warmup")


async def _timed(name: str, step: Awaitable[Any], took: dict[str, float]) -> None:
    began = time.perf_counter()
    try:
        await step
    except Exception as exc:
        log.warning("warm-up of %s failed (calls that use it will say so): %s", name, exc)
    took[name] = round((time.perf_counter() - began) * 1000)


async def run_steps(steps: dict[str, Awaitable[Any]]) -> dict[str, float]:
    """Run the steps side by side; how long each took to finish (ms from the start)."""
    took: dict[str, float] = {}
    await asyncio.gather(*(_timed(name, step, took) for name, step in steps.items()))
    return took


def dtmf() -> None:
    """The DTMF filter bases (built once per process, ~300 KB) and the bank's two passes over a key."""
    from worker.media.dtmf import COLS, ROWS, DtmfBank, DtmfDetector

    t = np.arange(1600) / 16000
    tone = (8000 * (np.sin(2 * np.pi * ROWS[0] * t) + np.sin(2 * np.pi * COLS[0] * t))).astype(np.int16)
    bank, detector = DtmfBank(), DtmfDetector()
    for i in range(0, len(tone), 320):
        bank.feed(detector, tone[i : i + 320], lambda _digit: None)
        bank.flush()


def webrtc_vad() -> None:
    from worker.media.vad import WebRtcVad

    WebRtcVad().is_speech(np.zeros(320, dtype=np.int16))


def ten_vad() -> None:
    """TEN's native library (each call gets a handle of its own: this loads the library and its code)."""
    from worker.media.vad import TenStream

    stream = TenStream()
    for hop in stream.push(np.zeros(512, dtype=np.int16)):
        stream.judge(hop)


def rnnoise() -> None:
    from worker.media.denoise import Denoiser

    denoiser = Denoiser()
    try:
        noise = (np.random.default_rng(0).standard_normal(960) * 300).astype(np.int16)
        for i in range(0, len(noise), 320):
            denoiser.process(noise[i : i + 320])
    finally:
        denoiser.close()
