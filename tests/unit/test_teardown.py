"""A call's teardown closes each resource on its own: one that fails is logged by name, the rest close."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common import wire
from common.config import Settings
from common.tasks import close_each
from tests.unit.callfakes import FakeHost, fake_services
from worker.call.session import CallSession

log = logging.getLogger("pbx.test.teardown")


class Resource:
    """A fake bot link / peer connection / recorder / dump: records its close, or fails it."""

    ring_ms = None  # as a call leg: the call never rang

    def __init__(self, name: str, closed: list[str], fails: bool = False, sync: bool = False) -> None:
        self.name = name
        self.closed = closed
        self.fails = fails
        self.sync = sync

    def _close(self) -> None:
        self.closed.append(self.name)
        if self.fails:
            raise OSError(f"{self.name} socket already gone")

    def close(self) -> Any:
        if self.sync:
            return self._close()

        async def closing() -> None:
            await asyncio.sleep(0)
            self._close()

        return closing()

    def add(self, kind: str, body: Any) -> None:  # the dump's
        pass


async def test_close_each_goes_on_past_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    with caplog.at_level(logging.WARNING, logger=log.name):
        failed = await close_each(
            log,
            (
                ("bot link", Resource("bot", closed, fails=True).close),
                ("sip leg", Resource("sip", closed, fails=True, sync=True).close),
                ("recorder", Resource("recorder", closed).close),
                ("nothing", lambda: None),
            ),
        )
    assert closed == ["bot", "sip", "recorder"]
    assert failed == ["bot link", "sip leg"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "closing bot link failed" in messages[0] and "bot socket already gone" in messages[0]
    assert "closing sip leg failed" in messages[1]


async def test_close_each_lets_cancellation_through() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await close_each(log, (("bot link", cancelled),))


async def test_a_failing_bot_link_does_not_skip_the_recorder_or_the_dump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []

    async def remove(call_id: str) -> bool:
        closed.append("registry")
        return True

    services = fake_services(Settings(recorder_path=str(tmp_path)), registry=SimpleNamespace(remove=remove))
    host = FakeHost()
    session = CallSession(services, host, "c1", "webrtc", "web-1", False, 0)
    session.start()
    session.media_pass.link = Resource("bot", closed, fails=True)  # type: ignore[assignment]
    session.leg = Resource("peer connection", closed, fails=True)  # type: ignore[assignment]
    session.recording.recorder = Resource("recorder", closed)  # type: ignore[assignment]
    session.recording.dump = Resource("dump", closed)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="pbx.worker.call.session"):
        await session.hangup("test", "system")
    assert closed == ["bot", "peer connection", "recorder", "dump", "registry"]
    failures = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
    assert len(failures) == 2
    assert "closing bot link failed" in failures[0] and "closing peer connection failed" in failures[1]
    # The rest of the end still happens: the frontend is told, the process forgets the call, tasks end.
    assert any(m["k"] == wire.CTL and m["b"] == {"op": "close"} for m in host.sent)
    assert host.ended == [session] and session.done.is_set()
    await asyncio.sleep(0)
    assert len(session._tasks) == 0
