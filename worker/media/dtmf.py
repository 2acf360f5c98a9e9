"""In-band DTMF detection: key presses heard in the call audio itself (no RFC 4733 events needed).

The detector runs Goertzel filters at the eight ITU-T Q.23 frequencies (and the column tones' second
harmonics) over overlapping 26.5 ms windows taken every 5 ms, decides per window whether it holds a clean
tone pair, and turns those decisions into key presses with Q.24 timing: a press is reported once it has
been heard for about 30 ms, ends after about 30 ms without it, and drop-outs up to 20 ms do not split it.

The filters are evaluated for all windows of a call at once as a matrix product (the single-bin DFT that
the Goertzel recursion computes), so there is no per-sample Python loop. A media process runs all its calls'
detectors through one DtmfBank, which screens every call's new audio at once and classifies only the few
windows that might hold a key.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
from collections.abc import Callable

import numpy as np

log = logging.getLogger("pbx.worker.dtmf")

ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")

# 26.5 ms: the rectangular window's second spectral null (75 Hz) falls about on the neighbouring row
# frequency (73-89 Hz apart), so a row tone leaks at most about -18 dB into the next row's filter, and the
# filters are narrow (38 Hz to the first null), so speech harmonics between two rows do not mask a key
# pressed while someone talks. The long window does not blur the timing: see ON_S.
WINDOW_S = 0.0265
# A decision every 5 ms keeps the timing quantisation well below Q.24's 40 ms / 20 ms limits.
HOP_S = 0.005

# Q.24 leaves the sensitivity to each administration (they ask for operation down to about -25 dBm0 per
# tone); tones below -30 dBFS each are treated as absent, which also rejects silence and line hiss.
MIN_TONE_DBFS = -30.0
# The strongest row (column) must stand this far above the second strongest: a key sends one tone per
# group, while speech and music spread their energy over several.
GROUP_MARGIN_DB = 6.0
# The two tones must carry at least this share of the window's energy between BAND_HZ: speech and broadband
# noise do not. Measuring within the DTMF band rather than overall keeps keys audible over speech, whose
# energy mostly lies below it (voicing, first formant) or above it (fricatives).
MIN_PAIR_FRACTION = 0.5
BAND_HZ = (600.0, 1750.0)
# Q.24 twist limits (the level difference between the two tones that a receiver must accept): the low
# (row) tone up to 8 dB stronger than the high (column) tone, the column up to 4 dB stronger than the row.
MAX_ROW_OVER_COL_DB = 8.0
MAX_COL_OVER_ROW_DB = 4.0
# A keypad tone is a pure sine; voiced speech that happens to fit a pair has harmonics at twice the frequency.
# Only the column tone is checked: three of the row tones' second harmonics (1394, 1540, 1704 Hz) lie within
# 60-85 Hz of a column frequency, so the column tone itself leaks into them.
MAX_SECOND_HARMONIC_DB = -10.0

# Timing (Q.24): signals of 40 ms or more must be accepted and signals of 20 ms or less rejected, so a press
# needs 30 ms of windows holding the pair. A window holds the pair only once the tone fills about half of it
# (MIN_PAIR_FRACTION), so the time counted in windows tracks the real tone duration, whatever their length.
ON_S = 0.030
# Q.24: an interruption of up to 10-20 ms must not split a press, and a pause of 40 ms must separate two
# presses: the press ends after 30 ms of windows without its pair.
OFF_S = 0.030

_FULL_SCALE = 32768.0


@functools.cache
def _bases(sample_rate: int, window: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Filter bases, shared by every detector of a rate (~300 KB: one copy per process, not per call)."""
    tones = np.array(ROWS + COLS + tuple(2 * f for f in COLS))
    if tones.max() >= sample_rate / 2:
        raise ValueError(f"sample rate {sample_rate} Hz is too low for DTMF")
    # The window's DFT bins within BAND_HZ: by Parseval their power sums to the window's energy there.
    bins = np.fft.rfftfreq(window, 1 / sample_rate)
    band = bins[(bins >= BAND_HZ[0]) & (bins <= BAND_HZ[1])]
    freqs = np.concatenate([tones, band])
    phase = 2 * np.pi * np.outer(np.arange(window), freqs) / sample_rate
    # Matrix products give the real and imaginary parts of every filter for every window: first only the
    # eight key tones (cheap, and enough to reject silence and most speech), the rest only when needed.
    keys, rest = phase[:, :8], phase[:, 8:]
    key_basis = np.ascontiguousarray(np.concatenate([np.cos(keys), np.sin(keys)], axis=1))
    rest_basis = np.ascontiguousarray(np.concatenate([np.cos(rest), np.sin(rest)], axis=1))
    key_basis.flags.writeable = False
    rest_basis.flags.writeable = False
    return key_basis, rest_basis, len(tones) - 8


class DtmfDetector:
    """Streaming in-band DTMF detector (ITU-T Q.23 frequencies, Q.24 timing and twist)."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.window = int(round(WINDOW_S * sample_rate))
        self.hop = int(round(HOP_S * sample_rate))
        self.on_windows = int(round(ON_S / HOP_S))
        self.off_windows = int(round(OFF_S / HOP_S))
        self._key_basis, self._rest_basis, self._nharm = _bases(sample_rate, self.window)
        self._nrest = self._rest_basis.shape[1] // 2
        # |X|^2 of a full-window sine of amplitude a is (a * window / 2)^2: the threshold in the same units.
        min_amp = _FULL_SCALE * 10 ** (MIN_TONE_DBFS / 20)
        self._min_power = (min_amp * self.window / 2) ** 2
        # Two tones at the threshold carry at least this much energy over a window (a^2 / 2 per sample each).
        self._min_energy = 2 * (min_amp**2 / 2) * self.window * 0.5
        self._group_ratio = 10 ** (GROUP_MARGIN_DB / 10)
        self._row_over_col = 10 ** (MAX_ROW_OVER_COL_DB / 10)
        self._col_over_row = 10 ** (MAX_COL_OVER_ROW_DB / 10)
        self._harmonic_ratio = 10 ** (MAX_SECOND_HARMONIC_DB / 10)
        self.reset()

    def reset(self) -> None:
        # float32 (exact for 16-bit audio) unless wider samples come: see DtmfBank.
        self._buf = np.zeros(0, dtype=np.float32)
        self._digit: str | None = None  # the pair being heard (or bridged over a short drop-out)
        self._hits = 0  # windows that held it
        self._misses = 0  # consecutive windows since it was last held
        self._reported = False

    def process(self, samples: np.ndarray) -> list[str]:
        """Feed audio; returns the digits whose key press was confirmed in this audio (each press once)."""
        frames = self.windows(samples)
        return self.decide(self._classify(frames)) if len(frames) else []

    def windows(self, samples: np.ndarray) -> np.ndarray:
        """Buffer audio and return the analysis windows it completes (count × window, float64)."""
        buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float64).reshape(-1)])
        if len(buf) < self.window:
            self._buf = buf
            return np.zeros((0, self.window))
        count = (len(buf) - self.window) // self.hop + 1
        # Windows start at multiples of the hop in the stream, whatever the chunking, so the decisions (and
        # the digits) do not depend on how the audio is split into calls.
        step = buf.strides[0]
        frames = np.lib.stride_tricks.as_strided(
            buf, shape=(count, self.window), strides=(self.hop * step, step), writeable=False
        )
        self._buf = buf[count * self.hop :]
        return frames

    def decide(self, decisions: list[str | None]) -> list[str]:
        """Advance the press state through per-window decisions; returns the confirmed digits."""
        out: list[str] = []
        for digit in decisions:
            confirmed = self._step(digit)
            if confirmed is not None:
                out.append(confirmed)
        return out

    def _classify(self, frames: np.ndarray) -> list[str | None]:
        """The key whose tone pair each window holds, or None."""
        # Quiet windows (silence, pauses) cannot hold two tones above the level threshold: a dot product
        # each rules them out before any filtering. (Only a shortcut: two tones at the threshold carry
        # about twice _min_energy, so a quiet window never passes the tests below.)
        loud = np.einsum("ij,ij->i", frames, frames) >= self._min_energy
        if not loud.any():
            return [None] * len(frames)
        return self._pairs(frames)

    def _pairs(self, frames: np.ndarray) -> list[str | None]:
        """The key whose tone pair each window holds, or None: the classifier's tests."""
        out: list[str | None] = [None] * len(frames)
        spec = frames @ self._key_basis
        spec *= spec
        power = (spec[:, :8] + spec[:, 8:]).reshape(-1, 2, 4)  # window, row or column group, tone
        # Per group the strongest tone (the key's) and the second strongest.
        ranked = np.sort(power, axis=2)
        top = ranked[:, :, 3]
        # Both tones loud enough and each standing out from its group, within the twist limits.
        ok = top >= np.maximum(self._group_ratio * ranked[:, :, 2], self._min_power)
        row_p, col_p = top[:, 0], top[:, 1]
        ok = (
            ok[:, 0]
            & ok[:, 1]
            & (row_p <= self._row_over_col * col_p)
            & (col_p <= self._col_over_row * row_p)
        )
        # The band energy and the harmonics (most of the filters) only for the windows still in the running.
        left = np.flatnonzero(ok)
        if not len(left):
            return out
        row_p, col_p = row_p[left], col_p[left]
        r, c = power[left, 0].argmax(axis=1), power[left, 1].argmax(axis=1)
        rest = frames[left] @ self._rest_basis
        rest *= rest
        rest_power = rest[:, : self._nrest] + rest[:, self._nrest :]
        energy = np.sum(rest_power[:, self._nharm :], axis=1) * 2 / self.window
        # A full-window sine has |X|^2 * 2 / window equal to its energy in the window.
        held = (row_p + col_p) * 2 / self.window >= MIN_PAIR_FRACTION * energy
        held &= rest_power[np.arange(len(left)), c] <= self._harmonic_ratio * col_p
        for i in np.flatnonzero(held).tolist():
            out[left[i]] = KEYS[r[i]][c[i]]
        return out

    def _step(self, digit: str | None) -> str | None:
        """Advance the press state by one window; returns the digit when its press is confirmed."""
        if digit is None and self._digit is None:
            # Idle and nothing heard: no state changes, so a bank may skip the windows of idle calls that
            # cannot hold a tone pair (see DtmfBank) and leave their detectors exactly as classifying would.
            return None
        if digit is not None and digit == self._digit:
            self._hits += 1
            self._misses = 0
        elif digit is not None and (self._digit is None or not self._reported):
            # A new pair (or a different one before the last was confirmed) starts a candidate press.
            self._digit, self._hits, self._misses, self._reported = digit, 1, 0, False
        else:
            # Silence, speech, or a different pair while a confirmed press may still be going on: Q.24
            # requires a pause between digits, so a confirmed press must end before another can start.
            self._misses += 1
            if self._misses >= self.off_windows:
                self._digit, self._hits, self._misses, self._reported = None, 0, 0, False
                if digit is not None:
                    self._digit, self._hits = digit, 1
            return None
        if not self._reported and self._hits >= self.on_windows:
            self._reported = True
            return self._digit
        return None


# The first pass over all calls (DtmfBank) lets through every call with a window that passes the classifier's
# tests on the key tones alone (level, group margin, twist), each loosened by this factor. Its float32
# arithmetic errs by under 0.5 % of the power at the level threshold for 16-bit audio (0.5 dB would do),
# so the 1 dB margin never drops a window that the full classifier would accept.
PREFILTER_MARGIN = 10 ** (-1.0 / 10)


@functools.cache
def _prefilter_basis(sample_rate: int, window: int, hop: int, count: int) -> np.ndarray:
    """The key tones' filters for `count` windows a hop apart, as one float32 matrix (zero outside each
    window's samples). Columns, outermost first: cosine or sine; the tone's place in its group (697 and
    1209 Hz first, 941 and 1633 Hz last); row or column group; window."""
    # The key basis's columns: cosine or sine, row or column group, place in the group.
    key_basis = _bases(sample_rate, window)[0].reshape(window, 2, 2, 4).transpose(0, 1, 3, 2)
    filters = np.zeros(((count - 1) * hop + window, 2, 4, 2, count), dtype=np.float32)
    for k in range(count):
        filters[k * hop : k * hop + window, ..., k] = key_basis
    basis = filters.reshape(len(filters), 16 * count)
    basis.flags.writeable = False
    return basis


class DtmfBank:
    """All of a media process's detectors, run together once per media tick, on the loop.

    Per call and per frame a detector's numpy work is tiny and its cost is call overhead, so the bank works
    on all calls' audio at once, in one matrix (a row per call: its held history, then its new audio). A
    first pass screens every new window of every call (`_screen`: an energy gate, then one float32 matrix
    product for the eight key tones and the classifier's tests on them, with a margin). Only the windows it
    lets through go to the full classifier: a few percent of speech, none of silence or noise. Every other
    window provably holds no pair, so "no key" is what the classifier would have said; a detector that is
    idle (no press heard, pending or ending) does not even need to be told (its state stays as it is), and
    one that is busy gets "no key" for them. The digits, and the frames they come in, are those of each
    detector fed on its own.

    It all runs on the event loop, inline in `kick` right after the media clock's tick. Measured with
    bench/dtmf.py on two shared cores: the whole path, the listener's framing included, costs 4.3 µs of CPU
    per call and frame of speech at 200 calls (0.22 ms per call-second, under 1 ms per tick; 5.3 µs at 50
    calls, 3.8 µs at 400) and 2.1-2.6 µs of silence or noise, where the bank before (a thread classifying
    every window of every call) cost 18-23 µs and 8-10 µs. A hop to a thread and back would cost 20 µs of
    CPU per tick on a quiet machine (over 100 µs on a busy one) and hand over little: most of the work is
    numpy calls on small arrays, which hold the GIL.
    """

    def __init__(self) -> None:
        # What came since the last flush, in order: the detector, its audio, its callback.
        self._dets: list[DtmfDetector] = []
        self._chunks: list[np.ndarray] = []
        self._cbs: list[Callable[[str], None]] = []
        # Windows that went through the full classifier, and those the first pass spared it.
        self.classified = 0
        self.skipped = 0
        self._last: set[DtmfDetector] = set()  # the detectors of the last flush

    def feed(self, detector: DtmfDetector, samples: np.ndarray, on_digit: Callable[[str], None]) -> None:
        """Queue 1-D audio of one call; `on_digit(digit)` is called for each key press found at the next
        flush."""
        self._dets.append(detector)
        self._chunks.append(samples)
        self._cbs.append(on_digit)

    def kick(self) -> None:
        """Called by the media clock after each tick: everything queued is classified and reported now."""
        if self._dets:
            try:
                self.flush()
            except Exception:
                log.exception("dtmf detection failed")

    def flush(self) -> None:
        """Classify everything queued and report the digits found, here and now."""
        dets, chunks, cbs = self._dets, self._chunks, self._cbs
        if not dets:
            return
        self._dets, self._chunks, self._cbs = [], [], []
        n = len(dets)
        present = set(dets)
        if len(present) != n:
            dets, chunks, cbs = _merge(dets, chunks, cbs)
            n = len(dets)
        # A detector's history is a row of the matrix its last audio went through (see _run): one that got
        # no audio this time (its call paused or ended) gets a copy of its own, lest paused calls keep a
        # matrix each alive.
        for det in self._last.difference(present):
            det._buf = det._buf.copy()
        self._last = present
        # The steady state: one 20 ms frame per call, every detector holding the same length of history
        # (windows start at multiples of the hop in each call's stream). Such calls go as one matrix.
        lengths = list(map(operator.add, map(len, map(_BUF, dets)), map(len, chunks)))
        if lengths.count(lengths[0]) == n and len(set(map(_RATE, dets))) == 1:
            self._run(dets, chunks, cbs)
            return
        groups: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(zip(lengths, map(_RATE, dets), strict=True)):
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            self._run([dets[i] for i in members], [chunks[i] for i in members], [cbs[i] for i in members])

    def _run(
        self, dets: list[DtmfDetector], chunks: list[np.ndarray], cbs: list[Callable[[str], None]]
    ) -> None:
        """Detectors of one sample rate, each with as much audio (held and new) as the others."""
        det0, n = dets[0], len(dets)
        # Each row of the matrix: what the detector held, then the new audio (one copy for all). The history
        # keeps the audio's own precision: float32 (the type of a detector's empty history) holds 16-bit
        # samples exactly, at half the memory traffic of float64, which wider samples get.
        flat = itertools.chain.from_iterable(zip(map(_BUF, dets), chunks, strict=True))
        try:
            # (Telling numpy the type is faster than its finding out.)
            audio = np.concatenate(list(flat), dtype=np.float32, casting="safe").reshape(n, -1)
        except TypeError:  # samples float32 cannot hold exactly
            flat = itertools.chain.from_iterable(zip(map(_BUF, dets), chunks, strict=True))
            audio = np.concatenate(list(flat)).reshape(n, -1)
        window, hop, length = det0.window, det0.hop, audio.shape[1]
        count = (length - window) // hop + 1 if length >= window else 0
        # What each detector keeps for its next windows: a row of this matrix (which is not written again).
        for det, tail in zip(dets, audio[:, count * hop :], strict=True):
            det._buf = tail
        if not count:
            return
        # The first pass: the windows that might hold a pair (call × window, in order).
        maybe = _screen(det0, audio, count)
        # A press heard, pending or ending: the detector must see each of its windows' decisions.
        busy = [i for i, det in enumerate(dets) if det._digit is not None]
        self.classified += len(maybe)
        self.skipped += n * count - len(maybe)
        if not len(maybe) and not busy:
            return
        # The others hold no pair: "no key" for them is what the full classifier would have said.
        decisions: dict[int, list[str | None]] = {i: [None] * count for i in busy}
        if len(maybe):
            calls, at = np.divmod(maybe, count)
            step = audio.strides[1]
            windows = np.ndarray(
                (n, count, window), audio.dtype, audio, strides=(audio.strides[0], hop * step, step)
            )
            # The screen checked the windows' level, so the classifier's shortcut for quiet ones is moot.
            found = det0._pairs(np.asarray(windows[calls, at], dtype=np.float64))
            for i, k, digit in zip(calls.tolist(), at.tolist(), found, strict=True):
                decisions.setdefault(i, [None] * count)[k] = digit
        for i in sorted(decisions):
            for digit in dets[i].decide(decisions[i]):
                cbs[i](digit)


# Windows screened by one matrix product. The product's basis grows with the square of its windows and is
# cached per count: a call that sends seconds of audio at once (or a process behind real time) would otherwise
# build, and keep, a basis of gigabytes. A 20 ms frame makes 4 windows.
SCREEN_BLOCK = 8


def _screen(det: DtmfDetector, audio: np.ndarray, count: int) -> np.ndarray:
    """`_screen_block` over blocks of at most SCREEN_BLOCK windows (indices: row × count + window)."""
    if count <= SCREEN_BLOCK:
        return _screen_block(det, audio, count)
    found = []
    for first in range(0, count, SCREEN_BLOCK):
        c = min(SCREEN_BLOCK, count - first)
        start = first * det.hop
        hits = _screen_block(det, audio[:, start : start + (c - 1) * det.hop + det.window], c)
        found.append((hits // c) * count + first + hits % c)
    return np.sort(np.concatenate(found))


def _screen_block(det: DtmfDetector, audio: np.ndarray, count: int) -> np.ndarray:
    """The first pass: which of the first `count` windows of each row of `audio` (a call) might hold a tone
    pair, as indices into the rows' windows one after another (row × count + window).

    A window passes if it passes the classifier's tests on the key tones alone (level, group margin, twist),
    each loosened by PREFILTER_MARGIN, computed in float32 for all calls with one matrix product.
    """
    m = PREFILTER_MARGIN
    basis = _prefilter_basis(det.sample_rate, det.window, det.hop, count)
    audio = np.asarray(audio[:, : len(basis)], dtype=np.float32)
    # A row tone and a column tone both at the level threshold put at least this much energy into a window
    # (the pair's share of it, the largest eigenvalue of the four filters' Gram matrix, bounds their total
    # power): calls too quiet for that in all their new audio are out before the matrix product. That is
    # silence, noise and half of speech.
    rows = np.flatnonzero(np.einsum("ij,ij->i", audio, audio) >= m * 2 * det._min_power / _pair_gain(det))
    if not len(rows):
        return rows
    if len(rows) < len(audio):
        audio = audio[rows]
    spec = audio @ basis
    spec *= spec
    c = count
    power = spec[:, : 8 * c] + spec[:, 8 * c :]  # tone × group × window
    # Per group and window, the strongest and second strongest tone: elementwise maxima of the four tones
    # (numpy's reductions over short axes cost several times more).
    t0, t1, t2, t3 = (power[:, i * 2 * c : (i + 1) * 2 * c] for i in range(4))
    hi01, lo01, hi23, lo23 = np.maximum(t0, t1), np.minimum(t0, t1), np.maximum(t2, t3), np.minimum(t2, t3)
    top = np.maximum(hi01, hi23)
    second = np.maximum(np.minimum(hi01, hi23), np.maximum(lo01, lo23))
    ok = top >= np.maximum(second * (m * det._group_ratio), m * det._min_power)
    row, col = top[:, :c], top[:, c:]
    pair = (
        ok[:, :c]
        & ok[:, c:]
        & (row <= col * (det._row_over_col / m))
        & (col <= row * (det._col_over_row / m))
    )
    hits = np.flatnonzero(pair)
    return rows[hits // c] * c + hits % c


@functools.cache
def _pair_gain_for(sample_rate: int, window: int) -> float:
    key_basis = _bases(sample_rate, window)[0]
    gain = 0.0
    for r in range(4):
        for c in range(4, 8):
            v = key_basis[:, [r, r + 8, c, c + 8]]
            gain = max(gain, float(np.linalg.eigvalsh(v.T @ v)[-1]))
    return gain


def _pair_gain(det: DtmfDetector) -> float:
    """The most power a row and a column filter together draw from a window, per unit of its energy."""
    return _pair_gain_for(det.sample_rate, det.window)


_BUF = operator.attrgetter("_buf")
_RATE = operator.attrgetter("sample_rate")


def _merge(
    dets: list[DtmfDetector], chunks: list[np.ndarray], cbs: list[Callable[[str], None]]
) -> tuple[list[DtmfDetector], list[np.ndarray], list[Callable[[str], None]]]:
    """A call that sent several frames since the last flush: its audio joined, in order."""
    merged: dict[int, tuple[DtmfDetector, list[np.ndarray], Callable[[str], None]]] = {}
    for det, samples, cb in zip(dets, chunks, cbs, strict=True):
        merged.setdefault(id(det), (det, [], cb))[1].append(samples)
    return (
        [det for det, _, _ in merged.values()],
        [parts[0] if len(parts) == 1 else np.concatenate(parts) for _, parts, _ in merged.values()],
        [cb for _, _, cb in merged.values()],
    )
