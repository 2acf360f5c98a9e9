"""Structured logs: every line logged while handling a call names it (`call=<id>`), in every process."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import running_stack

pytestmark = pytest.mark.e2e


async def test_every_line_about_a_call_carries_its_id(tmp_path: Path) -> None:
    log = tmp_path / "stack.log"
    with running_stack(tmp_path, 1, 1, log=log, LOG_LEVEL="INFO") as info:
        c = await CallClient.open(info.ws, call_id="log-1")
        try:
            await c.invite()
            await c.send({"command": "play", "url": str(tmp_path / "missing.wav")})
            await c.event("error")
        finally:
            await c.close()  # the client leaves: the owner hangs up from its inbox, not from a command
        while info.redis.exists("pbx:call:log-1"):
            await asyncio.sleep(0.05)
    # Read once the stack has stopped: every process has flushed its output.
    lines = log.read_text(errors="replace").splitlines()
    about = [line for line in lines if "log-1" in line or "hangup reason=" in line]
    pattern = re.compile(r" (web|media)\[\d+\] pbx\.[\w.]+ call=log-1 ")
    # The frontend opened and closed the socket; the owner claimed it, failed the play and hung up.
    assert any("call opened" in line for line in about) and any("claimed" in line for line in about)
    assert any("hangup reason=connection_closed" in line for line in about)
    stray = [line for line in about if not pattern.search(line)]
    assert not stray, stray
