"""The recorder over the real stack: stereo WAV, caller left, server side right, in every codec."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e


async def stream(c: CallClient, frames: list[bytes], speed: float = 1.0) -> None:
    """Send frames paced at real time, as a phone would; `speed` times faster for a test that times nothing
    against the wall clock (the server stamps caller audio on its own clock, counted in samples). 2 is 100
    frames a second, under the stack's WS_MAX_AUDIO_FRAMES_PER_SEC (150): none is dropped."""
    start = time.monotonic()
    for i, f in enumerate(frames):
        await c.ws.send_bytes(f)
        delay = start + (i + 1) * 0.02 / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def read_stereo(path: Path) -> tuple[wave._wave_params, np.ndarray, np.ndarray]:
    with wave.open(str(path)) as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return params, data[0::2], data[1::2]


@pytest.mark.parametrize("codec", ["pcm", "pcmu", "pcma", "g722"])
async def test_recorder_stereo(stack: StackInfo, call_id: str, tmp_path: Path, codec: str) -> None:
    from worker.media.codecs import make_codec

    enc = make_codec(codec)
    caller = tone(1000, 1.0)
    frames = [enc.encode(caller[i : i + 320]) for i in range(0, len(caller), 320)]
    server = write_wav(tmp_path / "s.wav", tone(440, 1.0))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(codec=codec, recorder={})
        await c.send({"command": "play", "url": str(server)})
        await stream(c, frames)
        await c.event("trackEnd", trackId="server-side-track")
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    params, left, right = read_stereo(stack.recorder_path / f"{call_id}.wav")
    assert params.nchannels == 2 and params.framerate == 16000 and params.sampwidth == 2
    assert 0.9 * 16000 <= len(left) <= 2.5 * 16000
    assert abs(peak_freq(left) - 1000) < 15, "caller tone in the left channel"
    assert abs(peak_freq(right) - 440) < 15, "server tone in the right channel"
    assert rms(left) > 1000 and rms(right) > 1000


async def test_recorder_file_option_and_valid_header_while_recording(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(recorder={"recorderFile": f"custom/{call_id}-x"})
        await stream(c, [tone(500, 0.02).astype("<i2").tobytes()] * 30)
        await asyncio.sleep(0.5)
        path = stack.recorder_path / "custom" / f"{call_id}-x.wav"
        with wave.open(str(path)) as w:  # readable mid-call: the header is kept valid
            assert w.getnchannels() == 2 and w.getnframes() > 0
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
