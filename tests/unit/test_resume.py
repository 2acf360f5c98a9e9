"""What a resumable call holds for its next socket (worker/call/resume.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from common.protocol import ResumeOption
from worker.call.applink import AppLink
from worker.call.resume import MAX_HELD, RING, Resumption
from worker.call.services import CallHooks


def ev(n: int) -> dict[str, object]:
    return {"event": "addHistory", "text": str(n)}


def test_the_events_the_old_socket_did_not_write_come_first_then_the_held_ones() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    for n in range(5):
        r.sent(ev(n))
    r.detach(written=3)  # its frontend wrote 0, 1, 2
    assert r.detached
    r.hold(ev(5))
    assert r.attach() == [ev(3), ev(4), ev(5)]
    assert not r.detached
    r.sent(ev(6))
    r.detach(written=1)
    assert r.attach() == [], "counted from the new socket's start: all of it written"


def test_a_dead_frontend_or_an_old_count_loses_rather_than_repeats() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    for n in range(3):
        r.sent(ev(n))
    r.detach(written=None)
    assert r.attach() == [], "a frontend that died says nothing: nothing is sent twice"
    for n in range(RING + 10):
        r.sent(ev(n))
    r.detach(written=0)
    assert len(r.attach()) == RING, "no more than the ring remembers"


def test_held_events_are_bounded_with_a_note() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    r.detach(written=0)
    for n in range(MAX_HELD + 3):
        r.hold(ev(n))
    held = r.attach()
    assert len(held) == MAX_HELD + 1
    assert held[-1]["event"] == "error" and "3 events were dropped" in str(held[-1]["error"])


class App:
    """An AppLink with fakes around it: what it sends, and whether the call ended."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.ended: list[tuple[str, str]] = []
        self.tasks: list[asyncio.Task[Any]] = []

        def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
            task = asyncio.ensure_future(coro)
            self.tasks.append(task)
            return task

        async def update(call_id: str, **fields: Any) -> None:
            return None

        async def hangup(reason: str, initiator: str) -> None:
            self.ended.append((reason, initiator))

        hooks = CallHooks("c1", lambda ev: None, lambda *a: None, spawn, hangup, lambda: False)
        host: Any = SimpleNamespace(send=lambda proc, m: self.sent.append((proc, m)), ticks=0)
        self.link = AppLink(hooks, host, "media-1", "web-a", lambda r, i: self.ended.append((r, i)),
                            lambda: True, lambda: None, update)  # fmt: skip

    def ops(self) -> list[tuple[str, str]]:
        return [(p, m["b"].get("op") or m["b"].get("event")) for p, m in self.sent]


async def test_a_new_socket_that_leaves_before_its_takeover_leaves_the_call_waiting() -> None:
    app = App()
    link = app.link
    await link.configure(ResumeOption(timeout=30))
    link.event({"event": "answer"})
    link.resumed("web-b", "s2")  # a new socket on web-b while the one on web-a still looks open
    assert app.ops()[-1] == ("web-a", "replaced") and link.holding
    link.gone({"op": "gone", "frontend": "web-b", "socket": "s2", "written": 0})  # it left at once
    link.event({"event": "addHistory"})
    link.gone({"op": "gone", "frontend": "web-a", "socket": "s1", "written": 1})  # the old one answers
    assert link.resume.detached and link.frontend == "", "waiting for the app: not attached to web-b"
    link.resumed("web-c", "s3")
    assert app.ops()[-2:] == [("web-c", "claimed"), ("web-c", "addHistory")], "the held event, once"
    assert not app.ended
    for task in app.tasks:
        task.cancel()


async def test_a_stale_gone_does_not_detach_the_socket_the_call_moved_to() -> None:
    app = App()
    link = app.link
    await link.configure(ResumeOption(timeout=30))
    link.gone({"op": "gone", "frontend": "web-a", "socket": "s1", "written": 0})
    link.resumed("web-a", "s2")  # back on the same frontend
    link.gone({"op": "gone", "frontend": "web-a", "socket": "s1", "written": 0})  # the first one's, late
    assert not link.holding and link.frontend == "web-a" and link.socket == "s2"
    for task in app.tasks:
        task.cancel()
