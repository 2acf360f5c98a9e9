"""G.711 µ-law (PCMU) and A-law (PCMA) as numpy lookup tables.

The tables follow the classic Sun reference code (the algorithm of CPython's `audioop` and of RustPBX-era
servers): µ-law on 14-bit magnitudes with bias 33 and clip 8159, A-law on 13-bit magnitudes. Encoding is
one lookup of every 16-bit sample in a 65,536-entry table, decoding one lookup in a 256-entry table.
"""

from __future__ import annotations

import numpy as np

_ALL = np.arange(-32768, 32768, dtype=np.int32)  # every int16 value, in the order of its uint16 bits + 32768


def _segment(magnitude: np.ndarray, ends: tuple[int, ...]) -> np.ndarray:
    """The index of the first segment end at or above each magnitude (len(ends) when none is)."""
    return np.searchsorted(np.asarray(ends), magnitude, side="left")


def _ulaw_encode_table() -> np.ndarray:
    x = _ALL >> 2  # 14-bit, floored as the reference's arithmetic shift
    negative = x < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.where(negative, -x, x), 8159) + 0x21
    seg = _segment(magnitude, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    mantissa = (magnitude >> np.minimum(seg + 1, 15)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mantissa) ^ mask
    return code.astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    x = _ALL >> 3  # 13-bit
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -x - 1, x)
    seg = _segment(magnitude, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    mantissa = np.where(seg < 2, magnitude >> 1, magnitude >> np.minimum(seg, 15)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mantissa) ^ mask
    return code.astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (code & 0x70) >> 4
    t = ((code & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(code & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE = _ulaw_encode_table()
ULAW_DECODE = _ulaw_decode_table()
ALAW_ENCODE = _alaw_encode_table()
ALAW_DECODE = _alaw_decode_table()


def _index(samples: np.ndarray) -> np.ndarray:
    """Each int16 sample as its position in the encode tables (value + 32768)."""
    return samples.astype(np.int16, copy=False).view(np.uint16) ^ 0x8000


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to µ-law bytes, one per sample."""
    return ULAW_ENCODE[_index(samples)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """µ-law bytes to int16 samples."""
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to A-law bytes, one per sample."""
    return ALAW_ENCODE[_index(samples)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes to int16 samples."""
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
