"""In-band DTMF detection: key presses heard in the call audio itself (no RFC 4733 events needed).

The detector runs Goertzel filters at the eight ITU-T Q.23 frequencies (and the column tones' second
harmonics) over overlapping 26.5 ms windows taken every 5 ms, decides per window whether it holds a clean
tone pair, and turns those decisions into key presses with Q.24 timing: a press is reported once it has
been heard for about 30 ms, ends after about 30 ms without it, and drop-outs up to 20 ms do not split it.

The filters are evaluated for all windows of a call at once as a matrix product (the single-bin DFT that
the Goertzel recursion computes), so there is no per-sample Python loop; a 20 ms frame costs tens of µs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

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
        self._buf = np.zeros(0, dtype=np.float64)
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

    def classify(self, frames: np.ndarray) -> list[str | None]:
        """The key whose tone pair each window holds, or None (windows of any number of calls at once)."""
        return self._classify(frames)

    def _classify(self, frames: np.ndarray) -> list[str | None]:
        """The key whose tone pair each window holds, or None."""
        # Quiet windows (silence, pauses) cannot hold two tones above the level threshold: a dot product
        # each rules them out before any filtering.
        loud = np.einsum("ij,ij->i", frames, frames) >= self._min_energy
        if not loud.any():
            return [None] * len(frames)
        spec = frames @ self._key_basis
        power = spec[:, :8] ** 2 + spec[:, 8:] ** 2
        rows, cols = power[:, :4], power[:, 4:8]
        idx = np.arange(len(frames))
        r = np.argmax(rows, axis=1)
        c = np.argmax(cols, axis=1)
        row_p = rows[idx, r]
        col_p = cols[idx, c]
        ok = (row_p >= self._min_power) & (col_p >= self._min_power)
        if not ok.any():
            return [None] * len(frames)  # the usual case (silence, most speech): skip the rest
        rest = frames @ self._rest_basis
        rest_power = rest[:, : self._nrest] ** 2 + rest[:, self._nrest :] ** 2
        harmonics = rest_power[:, : self._nharm]
        energy = np.sum(rest_power[:, self._nharm :], axis=1) * 2 / self.window
        row_2nd = np.sort(rows, axis=1)[:, -2]
        col_2nd = np.sort(cols, axis=1)[:, -2]
        ok &= (row_p >= self._group_ratio * row_2nd) & (col_p >= self._group_ratio * col_2nd)
        ok &= (row_p <= self._row_over_col * col_p) & (col_p <= self._col_over_row * row_p)
        # A full-window sine has |X|^2 * 2 / window equal to its energy in the window.
        ok &= (row_p + col_p) * 2 / self.window >= MIN_PAIR_FRACTION * energy
        ok &= harmonics[idx, c] <= self._harmonic_ratio * col_p
        return [KEYS[int(r[i])][int(c[i])] if ok[i] else None for i in range(len(frames))]

    def _step(self, digit: str | None) -> str | None:
        """Advance the press state by one window; returns the digit when its press is confirmed."""
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


class DtmfBank:
    """All of a media process's detectors, classified together once per media tick.

    Per call and per frame the detector's numpy work is tiny and its cost is call overhead; stacking every
    call's new windows into one matrix product makes the whole process's DTMF a few calls per tick.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[DtmfDetector, np.ndarray, Callable[[str], None]]] = []
        self._wake = asyncio.Event()

    def feed(self, detector: DtmfDetector, samples: np.ndarray, on_digit: Callable[[str], None]) -> None:
        """Queue audio of one call; `on_digit(digit)` is called for each key press found at the next flush."""
        self._pending.append((detector, samples, on_digit))

    def flush(self) -> None:
        """Classify and report everything queued, here and now (tests; the media process uses `run`)."""
        batch = self._prepare()
        if batch is not None:
            parts, frames = batch
            self._finish(parts, parts[0][0].classify(frames))

    def kick(self) -> None:
        """Called by the media clock after each tick."""
        if self._pending:
            self._wake.set()

    async def run(self, run_off_loop: Callable[..., Awaitable[Any]]) -> None:
        """Cut windows on the loop, classify them on a thread (the matrix products release the GIL), report
        on the loop; one batch at a time, so each call's presses are decided in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._prepare()
                if batch is None:
                    continue
                parts, frames = batch
                try:
                    decisions = await run_off_loop(parts[0][0].classify, frames)
                except Exception:
                    log.exception("dtmf classification failed for %d windows", len(frames))
                    continue
                self._finish(parts, decisions)

    def _prepare(self) -> tuple[list[tuple[DtmfDetector, int, Callable[[str], None]]], np.ndarray] | None:
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        # A call may have sent several frames since the last flush: join them, in order, per detector.
        merged: dict[int, tuple[DtmfDetector, list[np.ndarray], Callable[[str], None]]] = {}
        for det, samples, cb in pending:
            entry = merged.setdefault(id(det), (det, [], cb))
            entry[1].append(samples)
        pending = [
            (det, chunks[0] if len(chunks) == 1 else np.concatenate(chunks), cb)
            for det, chunks, cb in merged.values()
        ]
        # The steady state: one 20 ms frame per call, each detector holding the same length of history.
        # Those calls' windows are cut from one matrix with no per-call numpy calls but two row copies.
        groups: dict[tuple[int, int, int], list[tuple[DtmfDetector, np.ndarray, Callable[[str], None]]]] = {}
        rest = []
        for item in pending:
            det, samples, _cb = item
            held = len(det._buf)
            if held + len(samples) >= det.window:
                groups.setdefault((held, len(samples), det.window * 1000 + det.hop), []).append(item)
            else:
                rest.append(item)
        parts: list[tuple[DtmfDetector, int, Callable[[str], None]]] = []
        stacks: list[np.ndarray] = []
        for (held, size, _shape), items in groups.items():
            det0 = items[0][0]
            matrix = np.empty((len(items), held + size))
            for row, (det, samples, _cb) in zip(matrix, items, strict=True):
                row[:held] = det._buf
                row[held:] = samples
            count = (held + size - det0.window) // det0.hop + 1
            windows = np.lib.stride_tricks.sliding_window_view(matrix, det0.window, axis=1)[:, :: det0.hop][
                :, :count
            ]
            stacks.append(windows.reshape(-1, det0.window))
            keep = matrix[:, count * det0.hop :]
            for row, (det, _samples, cb) in zip(keep, items, strict=True):
                det._buf = row.copy()
                parts.append((det, count, cb))
        for det, samples, _cb in rest:
            det._buf = np.concatenate([det._buf, np.asarray(samples, dtype=np.float64).reshape(-1)])
        if not stacks:
            return None
        return parts, np.concatenate(stacks) if len(stacks) > 1 else stacks[0]

    def _finish(
        self, parts: list[tuple[DtmfDetector, int, Callable[[str], None]]], decisions: list[str | None]
    ) -> None:
        at = 0
        for det, n, cb in parts:
            for digit in det.decide(decisions[at : at + n]):
                cb(digit)
            at += n
