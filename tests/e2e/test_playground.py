"""The playground page in Chromium, against the real stack: it renders, lists and kills calls, and places
WebRTC and WebSocket calls whose audio, DTMF and recording are checked end to end.

Chromium's fake microphone plays a 440 Hz tone; the server plays a 1000 Hz file back. The page records what
it receives (MediaRecorder, WebM/Opus), which is decoded here; the server's recording must hold the tone.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# The picture in the docs: written when missing or asked for, so a test run leaves the checkout clean.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
UPDATE_SCREENSHOT = os.environ.get("PBX_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists()
VIEWPORT = {"width": 1280, "height": 800}
MIC_FREQ = 440
PLAY_FREQ = 1000
# The fake microphone starts at getUserMedia, before the call is set up: a tone long enough that the
# server still hears a good part of it, then silence (the file plays once).
MIC_TONE_SECONDS = 2.5
MIC_SILENCE_SECONDS = 5.0


def fake_microphone(path: Path) -> Path:
    """A 48 kHz mono WAV for `--use-file-for-fake-audio-capture`: the tone, then silence."""
    rate = 48000
    samples = np.concatenate(
        [tone(MIC_FREQ, MIC_TONE_SECONDS, rate=rate), np.zeros(int(MIC_SILENCE_SECONDS * rate), np.int16)]
    )
    return write_wav(path, samples, rate=rate)


def loud_part(audio: np.ndarray, threshold: float = 1500) -> np.ndarray:
    """The span of 16 kHz `audio` from its first to its last loud 20 ms window."""
    loud = [i for i in range(0, len(audio) - 319, 320) if rms(audio[i : i + 320]) > threshold]
    return audio[loud[0] : loud[-1] + 320] if loud else audio[:0]


def decode_recording(data: bytes) -> np.ndarray:
    """The page's MediaRecorder output (WebM/Opus) as 16 kHz mono int16."""
    import av

    out: list[np.ndarray] = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def _left_channel(path: Path) -> np.ndarray | None:
    if not path.exists() or path.stat().st_size <= 44:
        return None
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 16000, 2)
        both = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return both[0::2]


async def caller_channel(path: Path, timeout: float = 10.0) -> np.ndarray:
    """The left (caller) channel of the server's recording, once the file is there."""
    deadline = time.monotonic() + timeout
    while (left := _left_channel(path)) is None:
        assert time.monotonic() < deadline, f"no recording at {path}"
        await asyncio.sleep(0.05)
    return left


@pytest.fixture
def microphone(tmp_path: Path) -> Path:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: ./scripts/setup.sh dev installs Debian's chromium"
    return fake_microphone(tmp_path / "mic.wav")


@pytest.fixture
async def browser(microphone: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        # Debian's Chromium, never a downloaded one (`playwright install` is not used here).
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--allow-loopback-in-peer-connection",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"the page threw: {errors}"


async def wait_for(page: Page, expression: str, what: str, arg: Any = None, timeout: float = 15.0) -> Any:
    """Wait until `expression` (a JS function of `arg`, may be async) is truthy; explain a timeout."""
    try:
        handle = await page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        state = await page.evaluate("window.pbx.state")
        events = await page.evaluate("JSON.stringify(window.pbx.events.map(e => e.event))")
        raise AssertionError(f"{what}: not within {timeout}s (state {state}, events {events})") from None
    return await handle.json_value()


def has_event(name: str, **match: Any) -> str:
    """A JS predicate: some received event is `name` with fields `match`."""
    cond = " && ".join(
        [f"e.event === {json.dumps(name)}"]
        + [f"e[{json.dumps(k)}] === {json.dumps(v)}" for k, v in match.items()]
    )
    return f"() => window.pbx.events.some(e => {cond})"


async def open_playground(page: Page, stack: StackInfo) -> None:
    await page.goto(stack.base + "/")
    await wait_for(page, "() => window.pbx && window.pbx.state === 'idle'", "the page script started")


async def place_call(page: Page, call_id: str, call_type: str) -> None:
    # No STUN lookups from a loopback test: the browser gathers host candidates only.
    await page.route("**/iceservers", lambda route: route.fulfill(json=[]))
    await page.fill("#call-id", call_id)
    await page.select_option("#call-type", call_type)
    await page.check("#record")
    # The browser's noise suppression treats a steady tone as noise and fades it out.
    await page.uncheck("#aec")
    await page.click("#call")
    await wait_for(page, "() => window.pbx.state === 'answered'", "answer", timeout=20)


async def record_a_play(page: Page, wav: Path) -> np.ndarray:
    """Play `wav` from the server while the page records what it hears; the recording at 16 kHz."""
    await page.evaluate("window.pbx.startRecording()")
    await page.fill("#play-url", str(wav))
    await page.click("#play")
    await wait_for(page, has_event("trackEnd", trackId="server-side-track"), "trackEnd of the play")
    # The server has sent it all; wait until the browser has played it out too.
    await wait_for(page, "async () => (await window.pbx.remoteLevel()) < 0.02", "the tone played out")
    data = base64.b64decode(await page.evaluate("window.pbx.stopRecording()"))
    return decode_recording(data)


def check_received_tone(audio: np.ndarray) -> None:
    tone_part = loud_part(audio)
    seconds = len(tone_part) / 16000
    assert 0.8 <= seconds <= 1.4, f"the 1 s tone lasted {seconds:.2f} s in the page's recording"
    assert abs(peak_freq(tone_part) - PLAY_FREQ) < 15, "the page heard the server's tone"


async def check_caller_recording(stack: StackInfo, call_id: str) -> None:
    left = await caller_channel(stack.recorder_path / f"{call_id}.wav")
    heard = loud_part(left)
    assert len(heard) >= 0.3 * 16000, f"only {len(heard) / 16000:.2f} s of the microphone tone recorded"
    assert abs(peak_freq(heard) - MIC_FREQ) < 15, "the server recorded the browser's microphone"


async def test_page_renders_and_manages_calls(
    stack: StackInfo, page: Page, call_id: str, tmp_path: Path
) -> None:
    await open_playground(page, stack)
    assert await page.title() == "pbx-voice playground"
    assert await page.is_enabled("#call") and not await page.is_enabled("#hangup")
    assert await page.input_value("#server") == stack.base
    assert await page.input_value("#call-type") == "webrtc"
    assert await page.is_disabled("#call-type option[value=sip]")
    await wait_for(page, "() => /updated/.test(document.getElementById('calls-status').textContent)", "poll")
    shot = await page.screenshot(path=str(tmp_path / "idle.png"))
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(shot[16:20], "big") == VIEWPORT["width"]

    servers = await page.evaluate("async () => (await fetch('/iceservers')).json()")
    assert isinstance(servers, list)
    assert all(isinstance(s["urls"], list) and all(isinstance(u, str) for u in s["urls"]) for s in servers)

    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        row = f"#calls tr[data-id={json.dumps(call_id)}]"
        await wait_for(page, "sel => !!document.querySelector(sel)", "the call in the list", arg=row)
        assert await page.text_content(f"{row} td:nth-child(2)") == "websocket"
        await page.click(f"{row} button.kill")
        hangup = await c.event("hangup", timeout=10)
        assert hangup["reason"] == "killed"
        await wait_for(page, "sel => !document.querySelector(sel)", "the call gone from the list", arg=row)
    finally:
        await c.close()


async def test_webrtc_call(stack: StackInfo, page: Page, call_id: str, tmp_path: Path) -> None:
    beep = write_wav(tmp_path / "beep.wav", tone(PLAY_FREQ, 1.0))
    await open_playground(page, stack)
    await place_call(page, call_id, "webrtc")
    await wait_for(page, "() => window.pbx.pc.connectionState === 'connected'", "media connected")

    check_received_tone(await record_a_play(page, beep))

    for key in ("1", "5", "hash"):
        await page.click(f"#dtmf-{key}")
    digits = await wait_for(
        page,
        "() => { const d = window.pbx.events.filter(e => e.event === 'dtmf'); return d.length >= 3 && d; }",
        "three dtmf events",
    )
    assert [d["digit"] for d in digits] == ["1", "5", "#"]
    assert all(d["trackId"] == call_id for d in digits)

    await page.click("#hangup")
    await wait_for(page, "() => window.pbx.state === 'ended'", "the call ended")
    assert await page.evaluate(has_event("hangup", reason="normal_clearing", initiator="caller"))
    await check_caller_recording(stack, call_id)


async def test_websocket_call(stack: StackInfo, page: Page, call_id: str, tmp_path: Path) -> None:
    beep = write_wav(tmp_path / "beep.wav", tone(PLAY_FREQ, 1.0))
    await open_playground(page, stack)
    await place_call(page, call_id, "websocket")
    assert await page.is_disabled("#dtmf-1"), "RFC 4733 DTMF needs WebRTC"

    check_received_tone(await record_a_play(page, beep))

    await page.fill(
        "#tts-text", "This is a long sentence for the playground. It is interrupted before the end."
    )
    await page.click("#speak")
    await wait_for(page, has_event("trackStart", playId="tts-1"), "the speech started", timeout=20)
    await page.click("#interrupt")
    await wait_for(page, has_event("interruption", playId="tts-1"), "the speech interrupted")

    # One line per event; a click shows its pretty JSON.
    answer = page.locator("#log li.answer summary")
    await answer.click()
    pretty = await wait_for(
        page, "() => document.querySelector('#log li.answer pre').textContent", "the answer's JSON shown"
    )
    assert (
        pretty is not None and json.loads(pretty)["trackId"] == call_id and '\n  "event": "answer"' in pretty
    )
    if UPDATE_SCREENSHOT:
        row = f"#calls tr.mine[data-id={json.dumps(call_id)}]"
        await wait_for(page, "sel => !!document.querySelector(sel)", "the call in the list", arg=row)
        await page.screenshot(path=str(SCREENSHOT))

    await page.click("#hangup")
    await wait_for(page, "() => window.pbx.state === 'ended'", "the call ended")
    assert await page.evaluate(has_event("hangup"))
    await check_caller_recording(stack, call_id)
