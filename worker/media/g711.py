"""G.711 µ-law and A-law with numpy lookup tables, bit-exact with the classic Sun reference code (audioop)."""

from __future__ import annotations

import numpy as np

_BIAS = 0x21
_CLIP = 8159


def _ulaw_encode_one(sample: int) -> int:
    # µ-law works on 14-bit magnitudes: drop the 2 low bits first (floor, as an arithmetic shift does).
    pcm = sample >> 2
    if pcm < 0:
        pcm = -pcm
        mask = 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, _CLIP) + _BIAS
    seg_end = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
    seg = next((i for i, end in enumerate(seg_end) if pcm <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def _ulaw_decode_one(code: int) -> int:
    code = ~code & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


def _alaw_encode_one(sample: int) -> int:
    # A-law works on 13-bit magnitudes; the reference drops the 3 low bits first.
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg_end = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
    seg = next((i for i, end in enumerate(seg_end) if pcm <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def _alaw_decode_one(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


_ALL = np.arange(65536, dtype=np.uint16).view(np.int16)
_ULAW_ENC = np.array([_ulaw_encode_one(int(s)) for s in _ALL], dtype=np.uint8)
_ALAW_ENC = np.array([_alaw_encode_one(int(s)) for s in _ALL], dtype=np.uint8)
_ULAW_DEC = np.array([_ulaw_decode_one(c) for c in range(256)], dtype=np.int16)
_ALAW_DEC = np.array([_alaw_decode_one(c) for c in range(256)], dtype=np.int16)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return _ULAW_ENC[pcm.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    return _ALAW_ENC[pcm.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]
