"""Decode an audio file (WAV, MP3 and the other audio containers below) to mono int16 at 16 kHz.

Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import wave
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
        samples = _plain_wav(source)
    except (wave.Error, EOFError, OSError, ValueError):
        samples = None
    if samples is not None:
        source.close()
        if len(samples) > MAX_SECONDS * 16000:
            raise AudioFileError(f"{path} is longer than {MAX_SECONDS} s")
        if not len(samples):
            raise AudioFileError(f"{path} holds no audio")
        return samples
    try:
        if source.seekable():
            source.seek(0)
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


def _plain_wav(source: BinaryIO) -> np.ndarray | None:
    """The samples of a WAV file that is already mono 16-bit PCM at 16 kHz, else None (FFmpeg decodes it).

    FFmpeg decodes such a file frame by frame, in small steps that each take the GIL: 10 ms for 20 s of audio
    against 0.6 ms read here. With each new call starting a `play`, those threads kept the media loop waiting
    and stretched the setup of the calls arriving meanwhile (docs/performance.md, "Low load and the setup
    tail")."""
    if not source.seekable() or source.read(12)[8:12] != b"WAVE":
        return None
    source.seek(0)
    with wave.open(source, "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 16000):
            return None
        data = w.readframes(min(w.getnframes(), MAX_SECONDS * 16000 + 1))
    return np.frombuffer(data, "<i2").astype(np.int16)


def _reason(exc: Exception) -> str:
    """FFmpeg's complaint without the file name it appends (a server path, or a file object's repr)."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return "not an audio file this server reads" if exc.errno == 22 else str(exc.strerror)
    return str(exc)
