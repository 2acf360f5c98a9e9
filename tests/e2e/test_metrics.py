"""`GET /metrics` over the real stack: every process's figures, from either frontend, move as calls run."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.keys import Keys
from common.metrics import CONTENT_TYPE
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_playback import write_wav

KEYS = Keys()

pytestmark = pytest.mark.e2e


@dataclass
class Figures:
    """One scrape: which frontend answered, and every sample."""

    proc: str
    content_type: str
    text: str
    samples: list[tuple[str, dict[str, str], float]]
    types: dict[str, str]

    def value(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels` (0 if there is none)."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def by_proc(self, name: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, ls, v in self.samples:
            if n == name and labels.items() <= ls.items():
                out[ls["proc"]] = out.get(ls["proc"], 0) + v
        return out

    def since(self, before: Figures, name: str, **labels: str) -> float:
        """How much `name` grew since `before`, over the processes alive now (another test may have killed
        one, whose figures vanish; a new one counts from zero)."""
        old = before.by_proc(name, **labels)
        return sum(v - old.get(proc, 0) for proc, v in self.by_proc(name, **labels).items())

    def procs(self, name: str, role: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, ls, v in self.samples:
            if n == name and ls.get("role") == role:
                out[ls["proc"]] = out.get(ls["proc"], 0) + v
        return out


async def scrape(base: str) -> Figures:
    # A fresh connection each time, so the kernel may hand it to either frontend.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
            proc, ctype = resp.headers["X-Pbx-Proc"], resp.headers["Content-Type"]
    families = list(text_string_to_metric_families(text))
    types = {f.name: f.type for f in families}
    assert "untyped" not in types.values(), "every sample belongs to a declared family"
    samples = [(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples]
    for _, labels, _ in samples:
        assert labels["role"] in ("web", "media") and labels["proc"].startswith(labels["role"])
    return Figures(proc, ctype, text, samples, types)


async def until(base: str, check: Callable[[Figures], bool], timeout: float = 6.0) -> Figures:
    """Scrape until `check` holds (media processes publish about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        figures = await scrape(base)
        if check(figures):
            return figures
        if time.monotonic() > deadline:
            return figures  # the caller's assertions say what is missing
        await asyncio.sleep(0.25)


async def short_call(c: CallClient, tmp_path: Path) -> None:
    """Answer, 10 frames of caller audio, a 20-frame `play` to its end, one `history` answered."""
    wav = write_wav(tmp_path / "a.wav", tone(440, 0.4))  # 20 frames
    await c.invite()
    for _ in range(10):
        await c.ws.send_bytes(np.zeros(320, dtype="<i2").tobytes())
    await c.send({"command": "play", "url": str(wav), "playId": "p"})
    await c.event("trackEnd", trackId="server-side-track", timeout=5)
    await c.send({"command": "history", "speaker": "user", "text": "hello"})
    await c.event("addHistory")


async def test_a_call_moves_the_cluster_figures(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    before = await scrape(stack.base)
    assert before.content_type == CONTENT_TYPE
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await short_call(c, tmp_path)

        def delta(f: Figures, name: str, **labels: str) -> float:
            return f.since(before, name, **labels)

        def during_call(f: Figures) -> bool:
            return (
                f.value("pbx_calls_active", type="websocket") >= 1
                and delta(f, "pbx_audio_frames_out_total", type="websocket") >= 20
                and delta(f, "pbx_audio_frames_in_total", type="websocket") >= 10
                and delta(f, "pbx_command_roundtrip_seconds_count", command="history") >= 1
            )

        live = await until(stack.base, during_call)
        assert live.value("pbx_calls_active", type="websocket") >= 1
        assert live.value("pbx_frontend_connections", type="websocket") >= 1
        assert delta(live, "pbx_calls_started_total", type="websocket") >= 1
        assert delta(live, "pbx_audio_frames_out_total", type="websocket") >= 20
        assert delta(live, "pbx_audio_frames_in_total", type="websocket") >= 10
        for command in ("invite", "play", "history"):
            assert delta(live, "pbx_command_roundtrip_seconds_count", command=command) >= 1, command
        # The round trips were timed on the frontend that holds the socket.
        rtt = live.procs("pbx_command_roundtrip_seconds_count", "web")
        assert rtt.get(c.frontend, 0) >= 3
        rtt_sum = delta(live, "pbx_command_roundtrip_seconds_sum", command="history")
        assert 0 < rtt_sum < 5
        assert delta(live, "pbx_call_setup_seconds_count", type="websocket") >= 1
        setup_inf = live.value("pbx_call_setup_seconds_bucket", type="websocket", le="+Inf")
        assert setup_inf == live.value("pbx_call_setup_seconds_count", type="websocket")
        assert delta(live, "pbx_call_setup_seconds_bucket", type="websocket", le="1") >= 1, (
            "set up within 1 s"
        )
        assert call_id not in live.text, "no call id in any label"
        # The call's messages crossed a direct link both ways (common/peerlink.py), not Redis.
        assert delta(live, "pbx_bus_batches_total", path="link", role="web") >= 1
        assert delta(live, "pbx_bus_batches_total", path="link", role="media") >= 1

        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()

    owner_active = {p: v for p, v in live.by_proc("pbx_calls_active", type="websocket").items() if v >= 1}

    def after_call(f: Figures) -> bool:
        # Each process publishes its own figures: the frontend's count of ended calls and the media process's
        # active calls need not arrive in the same snapshot.
        active = f.by_proc("pbx_calls_active", type="websocket")
        ended = f.since(live, "pbx_calls_ended_total", type="websocket") >= 1
        return ended and any(active.get(p, 0) < v for p, v in owner_active.items())

    ended = await until(stack.base, after_call)
    assert ended.since(live, "pbx_calls_ended_total", type="websocket") >= 1
    after_active = ended.by_proc("pbx_calls_active", type="websocket")
    assert any(after_active.get(p, 0) < v for p, v in owner_active.items()), "the owner holds one call less"
    # (Tests that kill processes of this stack may still see their calls counted as frontend_lost or
    # worker_lost meanwhile: only the reasons this call could have ended with are compared.)
    for reason in ("failed", "media_error", "rejected", "no_answer"):
        failed = ended.since(before, "pbx_calls_failed_total", type="websocket", reason=reason)
        assert failed == 0, f"a normal hangup is no failure ({reason})"


async def test_a_failed_call_is_counted(stack: StackInfo, call_id: str) -> None:
    before = await scrape(stack.base)
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {}})  # a WebRTC call needs the browser's offer
        hangup = await c.event("hangup")
        assert hangup["reason"] == "failed"
    finally:
        await c.close()

    def failed(f: Figures) -> float:
        return f.since(before, "pbx_calls_failed_total", type="webrtc", reason="failed")

    after = await until(stack.base, lambda f: failed(f) >= 1)
    assert failed(after) == 1
    assert after.types["pbx_calls_failed"] == "counter"
    started = after.since(before, "pbx_calls_started_total", type="webrtc")
    assert started == 1
    setups = after.since(before, "pbx_call_setup_seconds_count", type="webrtc")
    assert setups == 0, "a call that never answered has no set-up time"


def heartbeats(stack: StackInfo) -> dict[str, dict[str, Any]]:
    beats = [stack.redis.get(k) for k in stack.redis.scan_iter(match=KEYS.proc_pattern())]
    return {b["proc"]: b for b in (json.loads(raw) for raw in beats if raw)}


async def test_every_process_shows_from_either_frontend(stack: StackInfo) -> None:
    # Other tests kill processes of this stack: a killed one's figures stay up to the 5 s TTL, and a new
    # one's first snapshot may come before its clock has run. Wait until the figures match the heartbeats.
    deadline = time.monotonic() + 10
    while True:
        live = heartbeats(stack)
        f = await scrape(stack.base)
        shown = set(f.procs("pbx_process_open_fds", "web")) | set(f.procs("pbx_process_open_fds", "media"))
        ticks = f.procs("pbx_media_ticks_total", "media")
        if (shown == set(live) and min(ticks.values(), default=0) >= 10) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert shown == set(live), "every live process, and only those"
    seen: dict[str, Figures] = {}
    for _ in range(60):
        f = await scrape(stack.base)
        seen.setdefault(f.proc, f)
        if len(seen) == 2:
            break
    assert len(seen) == 2, "both frontends answered /metrics"
    for proc, f in seen.items():
        web, media = f.procs("pbx_process_open_fds", "web"), f.procs("pbx_process_open_fds", "media")
        assert proc in web and set(web) == set(seen), "both frontends, each scrape"
        assert set(media) == {p for p, b in live.items() if b["role"] == "media"} and len(media) == 2
        for role in ("web", "media"):
            rss = f.procs("pbx_process_resident_memory_bytes", role)
            assert len(rss) == len(web if role == "web" else media)
            assert all(v > 20_000_000 for v in rss.values()), rss
            assert all(v >= 5 for v in f.procs("pbx_process_open_fds", role).values())
            assert all(v > 0 for v in f.procs("pbx_process_cpu_seconds_total", role).values())
        ticks = f.procs("pbx_media_ticks_total", "media")
        assert len(ticks) == 2 and all(v >= 10 for v in ticks.values()), "the media clocks run"
        tick_counts = f.procs("pbx_media_tick_seconds_count", "media")
        assert all(v >= 10 for v in tick_counts.values())
        capacity = sum(int(b.get("capacity", 0)) for b in live.values() if b["role"] == "media")
        assert f.value("pbx_calls_capacity") == capacity == 200, "MAX_CALLS=100 in each of 2 media processes"
        assert f.procs("pbx_build_info", "media") and f.procs("pbx_build_info", "web")


async def test_local_tts_figures(stack: StackInfo, call_id: str) -> None:
    before = await scrape(stack.base)
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "tts", "text": "Metrics are counted here.", "playId": "m"})
        await c.event("trackEnd", playId="m", timeout=20)
    finally:
        await c.close()

    def syntheses(f: Figures) -> float:
        return f.since(before, "pbx_tts_syntheses_total", provider="local")

    after = await until(stack.base, lambda f: syntheses(f) >= 1)
    assert syntheses(after) == 1
    cached = after.since(before, "pbx_tts_syntheses_total", provider="local", source="cache")
    first_audio = after.since(before, "pbx_tts_first_audio_seconds_count", provider="local")
    assert first_audio == 1 - cached, "a first-audio time for each synthesis that was not a cache hit"
    assert after.since(before, "pbx_speech_errors_total", kind="tts") == 0
