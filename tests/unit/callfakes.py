"""Fakes a call's parts are built from in unit tests: the media services, the owning process, the hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from common.config import Settings
from worker.call.services import CallHooks, MediaServices


def fake_services(settings: Settings | None = None, **overrides: Any) -> MediaServices:
    """Media services whose models and pools are stand-ins: pass the ones a test uses as overrides."""

    async def remove(call_id: str) -> bool:
        return True

    async def update(call_id: str, **fields: Any) -> None:
        return None

    parts: dict[str, Any] = {
        "settings": settings or Settings(),
        "proc_id": "media-test",
        "registry": SimpleNamespace(remove=remove, update=update),
        "io": None,
        "cpu": None,
        "url_guard": None,
        "cache": None,
        "media_roots": None,
        "recorder_quota": None,
        "silero": None,
        "whisper": None,
        "denoise": None,
        "ten": None,
        "dtmf": None,
        "piper": None,
        "turn": None,
        "bot_http": lambda: None,
        "telephony": None,
    }
    parts.update(overrides)
    return MediaServices(**parts)


@dataclass
class FakeHost:
    """The owning process, as a session sees it (`CallHost`): what it was sent and told."""

    ticks: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)  # the messages, in order
    sent_to: list[str] = field(default_factory=list)  # the process each went to
    ending: list[tuple[Any, str, str]] = field(default_factory=list)
    ended: list[Any] = field(default_factory=list)

    def send(self, proc: str, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self.sent_to.append(proc)

    def end_soon(self, session: Any, reason: str, initiator: str) -> None:
        self.ending.append((session, reason, initiator))

    def session_ended(self, session: Any) -> None:
        self.ended.append(session)


@dataclass
class FakeCall:
    """A call as its parts see it (`CallHooks`): the events and errors raised, the hangups asked for."""

    call_id: str = "c1"
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str, int]] = field(default_factory=list)
    hangups: list[tuple[str, str]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    is_ending: bool = False

    def hooks(self) -> CallHooks:
        return CallHooks(
            call_id=self.call_id,
            emit=self.events.append,
            error=self.error,
            spawn=self.spawn,
            hangup=self.hangup,
            ending=lambda: self.is_ending,
        )

    def error(self, sender: str, message: str, code: int, track_id: str | None = None) -> None:
        self.errors.append((sender, message, code))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def hangup(self, reason: str, initiator: str) -> None:
        self.hangups.append((reason, initiator))
        self.is_ending = True
