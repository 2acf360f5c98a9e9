"""Start and stop the Pipecat bot (`tests.bots.pipecat_bot`) as a subprocess, and read its call reports.

Kept free of Pipecat imports: the bot runs in its own process, so the test process never imports it.

    async with pipecat_bot(tmp_path) as bot:
        ... connect a call to bot.url ("ws://127.0.0.1:<port>/twilio") ...
        await bot.wait_event(call_sid, "closed")
        bot.report(call_sid)  # list of {"t", "event", ...}
        bot.heard(call_sid)   # int16 samples at 8 kHz

`run_pipecat_bot` is the same as a plain context manager, for sync (e.g. module-scoped) fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class PipecatBot:
    """A running bot process: where to connect, and its per-call reports."""

    port: int
    report_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio"

    def _path(self, call_sid: str, suffix: str) -> Path:
        return self.report_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", call_sid) + suffix)

    def report(self, call_sid: str) -> list[dict[str, Any]]:
        """The call's report lines so far (empty before its `start`)."""
        path = self._path(call_sid, ".jsonl")
        if not path.exists():
            return []
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                lines.append(json.loads(line))
        return lines

    def events(self, call_sid: str, event: str) -> list[dict[str, Any]]:
        return [line for line in self.report(call_sid) if line["event"] == event]

    async def wait_event(self, call_sid: str, event: str, timeout: float = 5.0) -> dict[str, Any]:
        """The call's first report line with this event, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(call_sid, event)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"pipecat bot: no {event!r} for call {call_sid} in {timeout}s: {self.report(call_sid)}"
                )
            await asyncio.sleep(0.02)

    def heard(self, call_sid: str) -> np.ndarray:
        """All caller audio the bot received, as int16 at 8 kHz (written when the call ends)."""
        with wave.open(str(self._path(call_sid, ".heard.wav")), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
            return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM the bot and wait for it (SIGKILL after `timeout`); returns how long it took."""
        began = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.monotonic() - began


def _read_ready(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pipecat bot not ready in {timeout}s (exit {process.poll()}): {tail}")
        readable, _, _ = select.select([process.stdout], [], [], min(remaining, 0.2))
        if readable:
            chunk = os.read(process.stdout.fileno(), 256)
            if not chunk:
                continue
            line += chunk
    words = line.decode().split()
    if len(words) != 2 or words[0] != "READY":
        raise RuntimeError(f"pipecat bot printed {line!r}, not READY <port>")
    return int(words[1])


@contextlib.contextmanager
def run_pipecat_bot(
    report_dir: Path, *, log_level: str = "INFO", ready_timeout: float = READY_TIMEOUT
) -> Iterator[PipecatBot]:
    """Run the bot with its reports (and `bot.log`, its stderr) in `report_dir`, stopping it after."""
    report_dir.mkdir(parents=True, exist_ok=True)
    log_path = report_dir / "bot.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Our pytest settings must not reach the bot, nor Pipecat's hooks or origin filter from outside.
    for name in ("PYTHONWARNINGS", "PIPECAT_SETUP_FILES", "PIPECAT_ALLOWED_ORIGINS"):
        env.pop(name, None)
    command = [_python(), "-m", "tests.bots.pipecat_bot", "--report-dir", str(report_dir)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*command, "--log-level", log_level],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    bot: PipecatBot | None = None
    try:
        bot = PipecatBot(_read_ready(process, log_path, ready_timeout), report_dir, process, log_path)
        yield bot
    finally:
        if bot is not None:
            bot.stop()
        else:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


@contextlib.asynccontextmanager
async def pipecat_bot(
    report_dir: Path, *, log_level: str = "INFO", ready_timeout: float = READY_TIMEOUT
) -> AsyncIterator[PipecatBot]:
    """`run_pipecat_bot` for async tests: starting and stopping run off the event loop."""
    manager = run_pipecat_bot(report_dir, log_level=log_level, ready_timeout=ready_timeout)
    bot = await asyncio.to_thread(manager.__enter__)
    try:
        yield bot
    except BaseException:
        if not await asyncio.to_thread(manager.__exit__, *sys.exc_info()):
            raise
    else:
        await asyncio.to_thread(manager.__exit__, None, None, None)
