"""A call's side of a bridge (worker/call/bridge.py): who is told what, and what the caller hears."""

from __future__ import annotations

from typing import Any

import fakeredis
import numpy as np

from common import wire
from common.keys import Keys
from common.registry import Registry
from worker.call.bridge import CallBridge


class Sent(list[tuple[str, dict[str, Any]]]):
    def __call__(self, proc: str, message: dict[str, Any]) -> None:
        self.append((proc, message))


async def test_bridge_both_ways_and_unbridge() -> None:
    registry = Registry(fakeredis.FakeAsyncRedis(), Keys("pbx:"))
    await registry.register_pending("b", "websocket", "web-1")
    await registry.claim("b", "media-2")
    sent = Sent()
    a = CallBridge("a", "media-1", sent)
    assert await a.connect(registry, "a") == "cannot bridge a call to itself"
    assert await a.connect(registry, "zz") == "bridge target session not found: zz"
    assert not sent and not a.active
    assert await a.connect(registry, "b") is None
    assert sent.pop() == (
        "media-2",
        wire.msg("b", wire.CTL, {"op": "bridge", "peer": "a", "owner": "media-1"}),
    )
    a.caller_audio(np.full(320, 5, dtype=np.int16))
    proc, m = sent.pop()
    assert proc == "media-2" and m["c"] == "b" and m["k"] == wire.BRG and len(m["b"]) == 640
    a.disconnect("not-b")
    assert a.active, "unbridge of another call: nothing to do"
    a.disconnect()
    assert not a.active and sent.pop() == (
        "media-2",
        wire.msg("b", wire.CTL, {"op": "unbridge", "peer": "a"}),
    )


def test_the_other_caller_is_mixed_over_the_track_and_clipped() -> None:
    b = CallBridge("b", "media-2", Sent())
    assert b.mix(None) is None, "not bridged: the track's frame as it is"
    b.joined("a", "media-1")
    assert b.mix(None) is not None and not b.mix(None).any(), "bridged, nothing heard yet: silence"
    b.feed(np.full(320, 30000, dtype=np.int16).tobytes())
    b.feed(np.full(320, -100, dtype=np.int16).tobytes())
    loud = b.mix(np.full(320, 10000, dtype=np.int16))
    assert loud is not None and loud.dtype == np.int16 and (loud == 32767).all(), "clipped, not wrapped"
    assert (b.mix(None) == -100).all()
    b.left("someone-else")
    assert b.active
    b.left("a")
    assert not b.active and b.mix(None) is None
