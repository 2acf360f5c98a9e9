"""pbxclient's audio: G.711 tables against known values and the reference algorithm, the socket codecs'
framing, the resampler."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from pbxclient import g711
from pbxclient.audio import AudioFrame, Decoder, Encoder, as_samples, concat, resample, rms
from tests.audio_util import peak_freq, tone

ALL = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_known_values() -> None:
    assert g711.ulaw_encode(np.array([0, -1, 32767, -32768, 1000, -1000], np.int16)) == bytes(
        [0xFF, 0x7E, 0x80, 0x00, 0xCE, 0x4E]
    )
    assert g711.ulaw_decode(bytes([0x00, 0x80, 0xFF, 0x7F, 0xCE, 0x4E])).tolist() == [
        -32124, 32124, 0, 0, 988, -988,
    ]  # fmt: skip


def test_alaw_known_values() -> None:
    assert g711.alaw_encode(np.array([0, -1, 32767, -32768, 1000, -1000], np.int16)) == bytes(
        [0xD5, 0x55, 0xAA, 0x2A, 0xFA, 0x7A]
    )
    assert g711.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A, 0xFA, 0x7A])).tolist() == [
        8, -8, 32256, -32256, 1008, -1008,
    ]  # fmt: skip


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_round_trip(law: str) -> None:
    encode, decode = getattr(g711, f"{law}_encode"), getattr(g711, f"{law}_decode")
    codes = np.arange(256, dtype=np.uint8).tobytes()
    levels = decode(codes)
    # Every level re-encodes to a code of the same level (µ-law's two zeros are one level).
    assert np.array_equal(decode(encode(levels)), levels)
    # Quantizing any sample moves it by less than its segment's step: at most 1/16 of its size, plus 8.
    error = np.abs(decode(encode(ALL)).astype(np.int32) - ALL.astype(np.int32))
    assert np.all(error <= np.abs(ALL.astype(np.int32)) // 16 + 8 + (132 if law == "ulaw" else 0))
    assert decode(encode(ALL)).dtype == np.int16 and len(encode(ALL)) == len(ALL)


def test_g711_bit_exact_with_the_reference_algorithm() -> None:
    """CPython's audioop (Sun's reference code) where it still exists (it is gone from 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")
        except ImportError:
            pytest.skip("no audioop in this Python")
    pcm = ALL.tobytes()
    codes = bytes(range(256))
    assert g711.ulaw_encode(ALL) == audioop.lin2ulaw(pcm, 2)
    assert g711.alaw_encode(ALL) == audioop.lin2alaw(pcm, 2)
    assert g711.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize(
    ("codec", "frame_bytes", "rate"),
    [("pcm", 640, 16000), ("pcmu", 160, 8000), ("pcma", 160, 8000), ("g722", 160, 16000)],
)
def test_codecs_frame_20_ms_and_hold_the_rest(codec: str, frame_bytes: int, rate: int) -> None:
    enc, dec = Encoder(codec), Decoder(codec)
    assert enc.sample_rate == dec.sample_rate == rate
    signal = tone(440, 0.1, rate=rate, amp=0.3)  # 5 frames
    first = enc.encode(signal[: len(signal) // 2 + 7])
    rest = enc.encode(signal[len(signal) // 2 + 7 :])
    frames = first + rest
    assert len(frames) == 5 and all(len(f) == frame_bytes for f in frames)
    out = np.concatenate([dec.decode(f) for f in frames])
    assert len(out) == len(signal)
    assert abs(peak_freq(out[rate // 50 :], rate) - 440) < 15
    assert rms(out) > 0.8 * rms(signal)
    assert enc.flush() == []
    tail = enc.encode(signal[:10]) + enc.flush()
    assert len(tail) == 1 and len(tail[0]) == frame_bytes


def test_pcm_is_s16le_and_decodes_at_the_servers_rate() -> None:
    assert Encoder("pcm").encode(np.array([1, -2] * 160, np.int16))[0][:4] == b"\x01\x00\xfe\xff"
    assert Decoder("pcm", 8000).sample_rate == 8000  # RustPBX and active-call send pcm at 8 kHz


def test_resample_keeps_pitch_and_length() -> None:
    x = tone(1000, 0.5, rate=16000, amp=0.5)
    down = resample(x, 16000, 8000)
    assert len(down) == 4000 and abs(peak_freq(down, 8000) - 1000) < 10
    up = resample(x, 16000, 48000)
    assert len(up) == 24000 and abs(peak_freq(up, 48000) - 1000) < 10
    assert abs(rms(down) - rms(x)) / rms(x) < 0.05
    # Above the new Nyquist frequency: removed, not folded back.
    assert rms(resample(tone(6000, 0.5, rate=16000), 16000, 8000)[200:-200]) < 0.02 * rms(x)
    assert resample(x, 16000, 16000) is x


def test_inputs_and_frames() -> None:
    samples, rate = as_samples(b"\x01\x00\x02\x00\x03")
    assert samples.tolist() == [1, 2] and rate is None
    samples, rate = as_samples(AudioFrame(np.ones(4, np.int16), 8000))
    assert rate == 8000 and len(samples) == 4
    assert as_samples(np.array([40000, -40000]))[0].tolist() == [32767, -32768]
    with pytest.raises(ValueError):
        as_samples(np.zeros(4, np.float32))
    frames = [AudioFrame(np.ones(160, np.int16), 8000), AudioFrame(np.zeros(160, np.int16), 8000)]
    assert len(concat(frames)) == 320 and frames[0].duration == 0.02
