"""Decode an audio file (WAV, MP3, anything FFmpeg reads) to mono int16 at 16 kHz.

Blocking: run it in a thread.
"""

from __future__ import annotations

import os

import av
import av.logging
import numpy as np

# FFmpeg's own console chatter about odd files is not ours to print; errors surface as exceptions.
av.logging.set_level(av.logging.PANIC)

MAX_SECONDS = 3600


class AudioFileError(ValueError):
    pass


def load_audio(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise AudioFileError(f"no such file: {path}")
    try:
        container = av.open(path, "r")
    except (av.FFmpegError, OSError) as exc:
        raise AudioFileError(f"cannot open {path}: {exc}") from None
    try:
        if not container.streams.audio:
            raise AudioFileError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks: list[np.ndarray] = []
        total = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += len(chunk)
            if total > MAX_SECONDS * 16000:
                raise AudioFileError(f"{path} is longer than {MAX_SECONDS} s")
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise AudioFileError(f"cannot decode {path}: {exc}") from None
    finally:
        container.close()
    if not chunks:
        raise AudioFileError(f"{path} holds no audio")
    return np.concatenate(chunks).astype(np.int16, copy=False)
