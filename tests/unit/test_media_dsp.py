"""Pure audio functions: G.711 tables, resamplers, codecs, file decoding and the WAV writer."""

from __future__ import annotations

import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from worker.media import g711
from worker.media.audiofile import AudioFileError, load_audio
from worker.media.codecs import make_codec
from worker.media.resample import Downsampler2x, Upsampler2x
from worker.media.wavwriter import StereoWavWriter

ALL = np.arange(65536, dtype=np.uint16).view(np.int16)


def _audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


def test_g711_bit_exact_with_audioop() -> None:
    audioop = _audioop()
    pcm = ALL.astype("<i2").tobytes()
    codes = bytes(range(256))
    assert g711.ulaw_encode(ALL) == audioop.lin2ulaw(pcm, 2)
    assert g711.alaw_encode(ALL) == audioop.lin2alaw(pcm, 2)
    assert g711.ulaw_decode(codes).astype("<i2").tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).astype("<i2").tobytes() == audioop.alaw2lin(codes, 2)


def test_upsampler_keeps_frequency_and_is_continuous_across_chunks() -> None:
    x = tone(1000, 1.0, rate=8000)
    one_shot = Upsampler2x().process(x)
    up = Upsampler2x()
    chunked = np.concatenate([up.process(x[i : i + 160]) for i in range(0, len(x), 160)])
    assert len(chunked) == 2 * len(x)
    assert np.array_equal(chunked, one_shot)
    assert abs(peak_freq(chunked) - 1000) < 5
    assert abs(rms(chunked[100:]) / rms(x) - 1) < 0.05


def test_downsampler_suppresses_aliases_and_keeps_voice_band() -> None:
    high = tone(6000, 1.0)
    low = tone(1000, 1.0)
    assert 20 * np.log10(rms(Downsampler2x().process(high)[50:]) / rms(high)) < -20
    kept = Downsampler2x().process(low)
    assert abs(20 * np.log10(rms(kept[50:]) / rms(low))) < 1
    down = Downsampler2x()
    odd_chunks = np.concatenate([down.process(low[i : i + 321]) for i in range(0, len(low), 321)])
    assert len(odd_chunks) == len(low) // 2
    assert np.array_equal(odd_chunks, kept)


@pytest.mark.parametrize("name,size", [("pcm", 640), ("pcmu", 160), ("pcma", 160), ("g722", 160)])
def test_codec_round_trip(name: str, size: int) -> None:
    enc, dec = make_codec(name), make_codec(name)
    x = tone(440, 1.0)
    payloads = [enc.encode(x[i : i + 320]) for i in range(0, len(x), 320)]
    assert enc.frame_bytes == size and all(len(p) == size for p in payloads)
    y = np.concatenate([dec.decode(p) for p in payloads])
    assert len(y) == len(x)
    if name == "pcm":
        assert np.array_equal(x, y)
    assert abs(peak_freq(y[1600:]) - 440) < 5
    assert rms(y[1600:]) > 0.7 * rms(x)


def test_unknown_codec_name_is_pcm_and_pcm_drops_odd_byte() -> None:
    c = make_codec(None)
    assert c.name == "pcm" and len(c.decode(b"\x01\x00\x02")) == 1


def _wav(path: Path, samples: np.ndarray, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples, channels).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("rate,channels", [(8000, 2), (44100, 1), (16000, 1)])
def test_load_audio_resamples_to_16k_mono(tmp_path: Path, rate: int, channels: int) -> None:
    path = _wav(tmp_path / "t.wav", tone(500, 2.0, rate=rate), rate, channels)
    y = load_audio(str(path))
    assert y.dtype == np.int16 and abs(len(y) - 32000) < 320
    assert abs(peak_freq(y) - 500) < 5


def test_load_audio_reads_a_16k_mono_wav_directly_with_ffmpegs_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.media import audiofile

    path = _wav(tmp_path / "t.wav", tone(500, 2.0, rate=16000), 16000, 1)
    direct = load_audio(str(path))
    with open(path, "rb") as f:
        assert audiofile._plain_wav(f) is not None, "read without FFmpeg"
    monkeypatch.setattr(audiofile, "_plain_wav", lambda source: None)
    decoded = load_audio(str(path))
    assert direct.dtype == np.int16 and direct.flags.writeable
    assert np.array_equal(direct, decoded)
    # Not 16 kHz mono 16-bit: FFmpeg's way, from the start of the file.
    with open(_wav(tmp_path / "s.wav", tone(500, 0.5, rate=8000), 8000, 2), "rb") as f:
        assert audiofile._plain_wav(f) is None


def test_load_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="no such file"):
        load_audio(str(tmp_path / "missing.wav"))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 64)
    with pytest.raises(AudioFileError):
        load_audio(str(junk))
    # A WAV header that promises 16 kHz mono and then no samples, or a truncated one.
    path = _wav(tmp_path / "t.wav", tone(500, 0.5, rate=16000), 16000, 1)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(_wav(tmp_path / "e.wav", np.zeros(0, np.int16), 16000, 1).read_bytes())
    with pytest.raises(AudioFileError):
        load_audio(str(empty))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:1001])
    assert len(load_audio(str(cut))) > 0


def test_wav_writer_header_valid_while_open(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.wav"
    w = StereoWavWriter(str(path))
    left, right = tone(1000, 0.5), tone(300, 0.5)
    w.write(left, right)
    with wave.open(str(path)) as r:
        assert (r.getnchannels(), r.getframerate(), r.getsampwidth(), r.getnframes()) == (2, 16000, 2, 8000)
    w.write(left, right)
    w.close()
    w.close()
    with wave.open(str(path)) as r:
        data = np.frombuffer(r.readframes(r.getnframes()), dtype="<i2")
    assert w.frames_written == 16000
    assert np.array_equal(data[0::2][:8000], left) and np.array_equal(data[1::2][:8000], right)
