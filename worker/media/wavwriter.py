"""A stereo 16-bit 16 kHz WAV writer whose header is valid after every write. Blocking: use a disk thread."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

RATE = 16000
CHANNELS = 2
WIDTH = 2


def _header(data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, CHANNELS, RATE, RATE * CHANNELS * WIDTH, CHANNELS * WIDTH, WIDTH * 8)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class StereoWavWriter:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(_header(0))
        self._file.flush()
        self._data = 0

    @property
    def frames_written(self) -> int:
        return self._data // (CHANNELS * WIDTH)

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        if self._file.closed:
            return
        both = np.empty(2 * len(left), dtype="<i2")
        both[0::2] = left
        both[1::2] = right
        self._file.write(both.tobytes())
        self._data += both.nbytes
        end = self._file.tell()
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + self._data))
        self._file.seek(40)
        self._file.write(struct.pack("<I", self._data))
        self._file.seek(end)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
