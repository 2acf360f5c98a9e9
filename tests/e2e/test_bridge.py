"""`bridge` / `unbridge` (active-call) over the real stack: two calls owned by different media processes,
each caller hears the other (tones asserted by frequency), and not after `unbridge`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def spread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    # PACK_CALLS=0: both media processes wait on the dispatch stream, and take new calls in turn.
    with running_stack(tmp_path_factory.mktemp("bridge"), 2, 1, PACK_CALLS="0") as info:
        yield info


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


async def stream(c: CallClient, freq: float, stop: asyncio.Event) -> None:
    """The caller's voice: a tone, one 20 ms frame every 20 ms, until `stop`."""
    audio = tone(freq, 1.0)
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while not stop.is_set():
        frame = audio[(i * 320) % len(audio) :][:320]
        await c.ws.send_bytes(frame.tobytes())
        i += 1
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))


def heard(c: CallClient, since: float) -> np.ndarray:
    return np.frombuffer(b"".join(f for t, f in c.frames if t >= since), dtype="<i2")


def dominant(pcm: np.ndarray) -> tuple[float, float]:
    """The strongest frequency (Hz) and the RMS level of `pcm`."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * 16000 / len(pcm)), float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


async def test_two_calls_on_two_media_processes_hear_each_other(spread: StackInfo) -> None:
    a = await CallClient.open(spread.ws, call_id="bridge-a")
    await a.invite(codec="pcm")
    b = await CallClient.open(spread.ws, call_id="bridge-b")
    await b.invite(codec="pcm")
    owners = [spread.redis.hget(f"pbx:call:{c.call_id}", "owner") for c in (a, b)]
    assert owners[0] and owners[1] and owners[0] != owners[1], f"the calls share a media process: {owners}"
    stop = asyncio.Event()
    talking = [asyncio.create_task(stream(a, 440, stop)), asyncio.create_task(stream(b, 1000, stop))]
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.5)
        assert not a.frames and not b.frames, "nothing plays before the bridge"

        await a.send({"command": "bridge", "targetSessionId": "bridge-self-check-first"})
        err = await a.event("error")
        assert (
            err["sender"] == "command"
            and err["error"] == "bridge target session not found: bridge-self-check-first"
        )
        await a.send({"command": "bridge", "targetSessionId": "bridge-a"})
        await a.event("error", error="cannot bridge a call to itself")

        await a.send({"command": "bridge", "targetSessionId": "bridge-b"})
        await asyncio.sleep(0.5)  # the patch is up on both sides, and the players' slack filled
        since = loop.time()
        await asyncio.sleep(1.0)
        freq_b, level_b = dominant(heard(b, since))
        freq_a, level_a = dominant(heard(a, since))
        assert abs(freq_b - 440) < 10 and level_b > 2000, ("b hears a's tone", freq_b, level_b)
        assert abs(freq_a - 1000) < 10 and level_a > 2000, ("a hears b's tone", freq_a, level_a)
        assert len(heard(b, since)) >= 0.8 * 16000, "about a second of audio in a second: no gaps"

        await b.send({"command": "unbridge", "targetSessionId": "bridge-a"})  # from the other side
        await asyncio.sleep(0.5)
        since = loop.time()
        await asyncio.sleep(0.6)
        for c in (a, b):
            rest = heard(c, since)
            assert not len(rest) or dominant(rest)[1] < 50, f"{c.call_id} still hears the other side"
        assert not [e for e in a.events + b.events if e["event"] == "error" and "bridge" not in e["error"]]
    finally:
        stop.set()
        for t in talking:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await t
        await a.close()
        await b.close()


async def test_a_bridge_ends_with_either_call(spread: StackInfo) -> None:
    a = await CallClient.open(spread.ws, call_id="bridge-c")
    await a.invite(codec="pcm")
    b = await CallClient.open(spread.ws, call_id="bridge-d")
    await b.invite(codec="pcm")
    stop = asyncio.Event()
    talking = asyncio.create_task(stream(a, 700, stop))
    try:
        await b.send({"command": "bridge", "targetSessionId": "bridge-c"})
        await asyncio.sleep(0.8)
        assert dominant(heard(b, 0))[1] > 2000, "b hears a"
        await a.send({"command": "hangup"})
        await a.event("hangup")
        await asyncio.sleep(0.3)
        since = asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)
        rest = heard(b, since)
        assert not len(rest) or dominant(rest)[1] < 50, "the bridge went with the call"
        await b.send({"command": "history", "speaker": "u", "text": "still here"})
        await b.event("addHistory")
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await talking
        await a.close()
        await b.close()
