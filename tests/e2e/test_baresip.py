"""baresip (a real softphone) calling the server and called by it, with audio checked both ways: baresip sends
a 440 Hz tone from a file, the server plays a 1 kHz file; baresip's `sndfile` dump shows what it heard and
the server's recording what it got."""

from __future__ import annotations

import asyncio
import queue
import wave
from pathlib import Path

import numpy as np
import pytest

from common.embedded import free_port, port_free
from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, Webhook
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e


class Baresip:
    def __init__(self, root: Path) -> None:
        self.root = root
        # baresip also listens for SIP over TLS on the next port: both must be free (a full run once found
        # the next one taken, and baresip would not start).
        self.port = free_port()
        while not port_free(self.port + 1):
            self.port = free_port()
        self.snd = root / "snd"
        self.snd.mkdir(parents=True)
        write_wav(root / "tone.wav", tone(440, 8.0, rate=8000, amp=0.3), rate=8000)  # aufile reads 8 kHz only
        rtp = free_port() // 2 * 2
        (root / "config").write_text(
            "\n".join(
                [
                    "module_path /usr/lib/baresip/modules",
                    f"sip_listen 127.0.0.1:{self.port}",
                    f"audio_source aufile,{root / 'tone.wav'}",
                    "audio_player aubridge,nil",
                    "audio_alert aubridge,nil",
                    f"snd_path {self.snd}",
                    f"rtp_ports {rtp}-{rtp + 20}",
                    "module g711.so",
                    "module aufile.so",
                    "module aubridge.so",
                    "module sndfile.so",
                    "module account.so",
                    "module_app menu.so",
                    "",
                ]
            )
        )
        (root / "accounts").write_text("<sip:baresip@127.0.0.1>;regint=0;answermode=auto\n")
        self.proc: asyncio.subprocess.Process | None = None
        self.log = root / "baresip.log"

    def output(self) -> str:
        """What baresip has printed so far (for a failure's message)."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(nothing)"

    async def start(self, seconds: int, *commands: str) -> None:
        args = ["-f", str(self.root), "-n", "127.0.0.1", "-t", str(seconds)]
        for command in commands:
            args += ["-e", command]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec("baresip", *args, stdout=log, stderr=log)
        await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def heard(self) -> np.ndarray:
        dumps = sorted(self.snd.glob("dump-*-dec.wav"))
        assert dumps, f"baresip wrote no dump: {list(self.snd.iterdir())}"
        with wave.open(str(dumps[-1])) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def left_channel(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)[0::2]


def loudest_second(audio: np.ndarray, rate: int) -> np.ndarray:
    windows = [rms(audio[i : i + rate // 50]) for i in range(0, len(audio) - rate // 50, rate // 50)]
    start = int(np.argmax(np.array(windows) > 500)) * (rate // 50)
    return audio[start : start + rate // 2]


async def test_server_calls_baresip(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    phone = Baresip(tmp_path / "baresip")
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.5))
    await phone.start(15)
    c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
    try:
        await c.send(
            {"command": "invite", "option": {"callee": f"sip:baresip@127.0.0.1:{phone.port}", "recorder": {}}}
        )
        await c.event("answer", timeout=10)
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track", timeout=5)
        await c.send({"command": "hangup"})
        await c.event("hangup")
    finally:
        await c.close()
        await asyncio.sleep(0.5)
        await phone.stop()
    heard = phone.heard()
    assert abs(peak_freq(loudest_second(heard, 8000), 8000) - 1000) < 30
    left = left_channel(stack.recorder_path / f"{call_id}.wav")
    assert abs(peak_freq(loudest_second(left, 16000)) - 440) < 30


async def test_baresip_calls_the_server(inbound: StackInfo, webhook: Webhook, tmp_path: Path) -> None:
    phone = Baresip(tmp_path / "baresip")
    wav = tmp_path / "khz.wav"
    write_wav(wav, tone(1000, 1.5))
    await phone.start(15, f"/dial sip:bot@127.0.0.1:{inbound.sip_port}")
    try:
        hook = await webhook.next(timeout=10)
    except queue.Empty:
        said = phone.output()
        raise AssertionError(f"no INVITE from baresip reached the server; it said:\n{said}") from None
    assert hook["caller"].startswith("sip:baresip@")
    call_id = hook["dialogId"]
    c = await CallClient.open(inbound.ws, "/call/sip", call_id=call_id)
    try:
        await c.event("incoming")
        await c.send({"command": "accept", "option": {"recorder": {}}})
        await c.event("answer")
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track", timeout=5)
        await phone.stop()  # baresip hangs up on the way out
        hangup = await c.event("hangup", timeout=5)
        assert hangup["initiator"] == "caller"
    finally:
        await c.close()
        await phone.stop()
    heard = phone.heard()
    assert abs(peak_freq(loudest_second(heard, 8000), 8000) - 1000) < 30
    left = left_channel(inbound.recorder_path / f"{call_id}.wav")
    assert abs(peak_freq(loudest_second(left, 16000)) - 440) < 30
