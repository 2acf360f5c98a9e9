"""Decode an audio file (WAV, MP3 and the other audio containers below) to mono int16 at 16 kHz.

Blocking: run it in a thread.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import av
import av.logging
import numpy as np

# FFmpeg's own console chatter about odd files is not ours to print; errors surface as exceptions.
av.logging.set_level(av.logging.PANIC)

MAX_SECONDS = 3600
# The only demuxers FFmpeg may pick. Playlists and indirections (HLS, concat, ffconcat, image2, ...) are
# left out: a file a client brought in (a downloaded URL) could otherwise make FFmpeg open other files or
# URLs by itself, outside the media roots.
AUDIO_FORMATS = "wav,w64,mp3,ogg,flac,aac,mov,matroska,aiff,caf,au,amr,wv"


class AudioFileError(ValueError):
    pass


def load_audio(source: str | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode `source` (a path, or a file open for reading, which is closed); `name` is how errors call
    it (default: the path)."""
    path = name or (source if isinstance(source, str) else "the file")
    if isinstance(source, str):
        if not os.path.isfile(source):
            raise AudioFileError(f"no such file: {path}")
        # FFmpeg gets a file, never a string: it would read `concat:`, `http:` and the like as protocols.
        source = open(source, "rb")  # noqa: SIM115 - closed below
    try:
        container = av.open(source, "r", options={"format_whitelist": AUDIO_FORMATS})
    except (av.FFmpegError, OSError) as exc:
        source.close()
        raise AudioFileError(f"cannot open {path}: {_reason(exc)}") from None
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
        raise AudioFileError(f"cannot decode {path}: {_reason(exc)}") from None
    finally:
        container.close()
        source.close()
    if not chunks:
        raise AudioFileError(f"{path} holds no audio")
    return np.concatenate(chunks).astype(np.int16, copy=False)


def _reason(exc: Exception) -> str:
    """FFmpeg's complaint without the file name it appends (a server path, or a file object's repr)."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return "not an audio file this server reads" if exc.errno == 22 else str(exc.strerror)
    return str(exc)
