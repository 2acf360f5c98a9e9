"""`/events/{id}` parts: the owner's watchers (worker/call/observers.py) and a frontend's subscription, its
bounded buffer and its frames (frontend/watch.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis

from common import wire
from common.keys import Keys
from common.registry import Registry
from frontend.watch import MAX_QUEUED, Watch, Watches, serve, sse_frame
from worker.call.observers import MAX_WATCHERS, Observers, not_watched


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, proc: str, message: dict[str, Any]) -> None:
        self.append((proc, message))


def test_watchers_get_events_and_commands_until_the_end() -> None:
    sent = Sent()
    obs = Observers("c1", sent)
    assert not obs, "no watcher: the call pays one test per event"
    obs.watch("w1", "web-a")
    obs.watch("w2", "web-b")
    obs.event({"event": "answer"})
    obs.command({"command": "history"})
    obs.unwatch("w2")
    obs.end()
    assert [(p, m["b"]["w"], m["b"]["t"]) for p, m in sent] == [
        ("web-a", "w1", "start"),  # each watcher hears at once that its copies start
        ("web-b", "w2", "start"),
        ("web-a", "w1", "event"),
        ("web-b", "w2", "event"),
        ("web-a", "w1", "command"),
        ("web-b", "w2", "command"),
        ("web-a", "w1", "end"),
    ]
    assert all(m["c"] == "c1" and m["k"] == wire.OBS for _, m in sent)
    assert not obs, "ended: nobody left"


def test_too_many_watchers_and_dead_frontends() -> None:
    sent = Sent()
    obs = Observers("c1", sent)
    for i in range(MAX_WATCHERS):
        obs.watch(f"w{i}", "web-a" if i % 2 else "web-b")
    sent.clear()
    obs.watch("one-more", "web-c")
    assert sent == [
        ("web-c", wire.msg("c1", wire.OBS, {"w": "one-more", "t": "end", "d": sent[0][1]["b"]["d"]}))
    ]
    assert "watchers already" in sent[0][1]["b"]["d"]["error"]
    obs.forget({"web-b"})
    assert obs.frontends() == {"web-a"}
    assert not_watched("gone", {"frontend": "web-a", "w": "w9"}) == (
        "web-a",
        wire.msg("gone", wire.OBS, {"w": "w9", "t": "end", "d": None}),
    )


class Response:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


def frames(resp: Response) -> list[tuple[str, Any]]:
    out = []
    for raw in resp.written:
        text = raw.decode()
        if text.startswith(":"):
            out.append(("comment", None))
            continue
        name, data = text.split("\n")[:2]
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_a_slow_reader_loses_frames_with_a_marker_never_the_call_time() -> None:
    registry = Registry(fakeredis.FakeAsyncRedis(), Keys("pbx:"))
    watches = Watches()
    watch = watches.open("c1")
    for i in range(MAX_QUEUED + 5):  # the client has read nothing yet
        watches.deliver({"w": watch.id, "t": "event", "d": {"event": "speaking", "n": i}})
    assert len(watch.frames) == MAX_QUEUED and watch.dropped == 5
    watches.deliver({"w": watch.id, "t": "end", "d": None})
    resp = Response()
    await asyncio.wait_for(serve(registry, watch, resp, lambda: False), 2)  # type: ignore[arg-type]
    got = frames(resp)
    assert got[0] == ("dropped", {"dropped": 5}), "said before the next frame"
    assert [d["n"] for _, d in got[1:]] == list(range(MAX_QUEUED))


async def test_the_stream_ends_with_the_call_or_its_entry() -> None:
    redis = fakeredis.FakeAsyncRedis()
    registry = Registry(redis, Keys("pbx:"))
    watch = Watch("c2")
    resp = Response()
    # No entry for c2 in the registry (its owner died, the reaper removed it): the stream ends by itself.
    task = asyncio.create_task(serve(registry, watch, resp, lambda: False))  # type: ignore[arg-type]
    watch.put("command", {"command": "play"})
    await asyncio.wait_for(task, 5)
    assert frames(resp) == [("command", {"command": "play"})]

    over = Watch("c3")
    over.put("end", {"error": "this call has 32 watchers already"})
    over.put("event", {"event": "late"})
    resp = Response()
    await serve(registry, over, resp, lambda: False)  # type: ignore[arg-type]
    assert frames(resp) == [("error", {"error": "this call has 32 watchers already"})]


async def test_the_owners_start_is_not_a_frame_and_an_end_releases_a_waiting_answer() -> None:
    watches = Watches()
    watch = watches.open("c4")
    assert not watch.started.is_set()
    watches.deliver({"w": watch.id, "t": "start", "d": None})
    assert watch.started.is_set() and not watch.frames, "the client never sees it"
    gone = watches.open("c5")
    watches.deliver({"w": gone.id, "t": "end", "d": None})  # the call had ended: no start will come
    await asyncio.wait_for(gone.started.wait(), 1)
    assert gone.ended


def test_a_frame_is_one_data_line() -> None:
    frame = sse_frame("event", {"event": "asrFinal", "text": "two\nlines"})
    assert frame.decode().count("\n") == 3 and frame.endswith(b"\n\n")


async def test_a_quiet_stream_gets_keep_alive_comments(monkeypatch: Any) -> None:
    import frontend.watch as watch_module

    monkeypatch.setattr(watch_module, "CHECK_EVERY", 0.02)
    monkeypatch.setattr(watch_module, "KEEP_ALIVE", 0.05)
    redis = fakeredis.FakeAsyncRedis()
    registry = Registry(redis, Keys("pbx:"))
    await registry.register_pending("c4", "websocket", "web-1")  # the call lives
    watch = Watch("c4")
    resp = Response()
    task = asyncio.create_task(serve(registry, watch, resp, lambda: False))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    watch.put("end", None)
    await asyncio.wait_for(task, 2)
    assert 2 <= resp.written.count(b": keep-alive\n\n") <= 5, resp.written


def test_a_frontend_serves_a_bounded_number_of_streams(monkeypatch: Any) -> None:
    import pytest

    import frontend.watch as watch_module
    from common.errors import Unavailable

    monkeypatch.setattr(watch_module, "MAX_WATCHES", 2)
    watches = Watches()
    first = watches.open("c1")
    watches.open("c2")
    with pytest.raises(Unavailable) as refused:
        watches.open("c3")
    assert refused.value.status == 503
    watches.close(first)
    watches.open("c3")  # room again
