"""The dashboard's data: the figures `summarize` makes of processes' snapshots, and `/dashboard/data` and
`/dashboard` on an app with fakeredis (published snapshots, reuse, Redis down, the API token)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import metrics
from common.keys import Keys
from common.metrics import Metrics
from frontend import auth, dashboard
from frontend.errors import errors_middleware
from frontend.keys import HUB

TOKEN = "dash-t0ken"


def media_snapshot(proc: str, host: str | None, at: float = 100.0) -> dict[str, Any]:
    """A media process's snapshot with the figures the dashboard reads, defined as the process does."""
    m = Metrics()
    if host is not None:
        m.gauge("pbx_process_info", "x", ("host",)).labels(host).set(1)
    active = m.gauge("pbx_calls_active", "x", ("type",))
    active.labels("websocket").set(2)
    active.labels("sip").set(1)
    active.labels("webrtc").set(0)
    m.gauge("pbx_calls_capacity", "x").labels().set(50)
    started = m.counter("pbx_calls_started_total", "x", ("type",))
    started.labels("websocket").inc(7)
    started.labels("sip").inc(3)
    m.counter("pbx_calls_ended_total", "x", ("type",)).labels("websocket").inc(5)
    failed = m.counter("pbx_calls_failed_total", "x", ("type", "reason"))
    failed.labels("websocket", "failed").inc(1)
    failed.labels("sip", "failed").inc(2)
    failed.labels("sip", "no_answer").inc(1)
    frames_in = m.counter("pbx_audio_frames_in_total", "x", ("type",))
    frames_in.labels("websocket").inc(1000)
    frames_in.labels("sip").inc(500)
    m.counter("pbx_audio_frames_out_total", "x", ("type",)).labels("websocket").inc(800)
    m.counter("pbx_audio_frames_dropped_total", "x", ("reason",)).labels("rtc_sender").inc(4)
    m.counter("pbx_process_cpu_seconds_total", "x").labels().inc(12.5)
    m.gauge("pbx_process_resident_memory_bytes", "x").labels().set(150e6)
    m.gauge("pbx_process_start_time_seconds", "x").labels().set(50.0)
    m.gauge("pbx_load_pressure", "x").labels().set(0.25)
    setup = m.histogram("pbx_call_setup_seconds", "x", ("type",), buckets=(0.1, 1.0))
    setup.labels("websocket").observe(0.05)
    setup.labels("sip").observe(0.5)
    setup.labels("sip").observe(5.0)
    m.histogram("pbx_asr_final_latency_seconds", "x", ("provider",), buckets=(0.5, 1.0))
    snap = m.snapshot(proc, "media")
    snap["at"] = at
    return snap


def web_snapshot(proc: str, at: float = 100.0) -> dict[str, Any]:
    m = Metrics()
    m.gauge("pbx_frontend_connections", "x", ("type",)).labels("websocket").set(3)
    m.counter("pbx_calls_failed_total", "x", ("type", "reason")).labels("websocket", "no_capacity").inc(2)
    m.counter("pbx_audio_frames_dropped_total", "x", ("reason",)).labels("slow_client").inc(9)
    command = m.histogram("pbx_command_roundtrip_seconds", "x", ("command",), buckets=(0.001, 0.01))
    command.labels("play").observe(0.0005)
    command.labels("tts").observe(0.005)
    snap = m.snapshot(proc, "web")
    snap["at"] = at
    return snap


def test_summarize_figures_of_each_process_and_of_the_cluster() -> None:
    snaps = [
        web_snapshot("web-h1-10-aaaaaa"),
        media_snapshot("media-h1-0-bbbbbb", "h1", at=101.0),
        media_snapshot("media-h2-0-cccccc", "h2"),
    ]
    data = dashboard.summarize(snaps, now=102.0)
    assert data["v"] == dashboard.DATA_VERSION and data["at"] == 102.0
    assert data["every"] == metrics.PUBLISH_EVERY
    assert data["active"] == {
        "total": 6,
        "by_type": {"websocket": 4, "sip": 2, "webrtc": 0},
        "by_host": {"h1": 3, "h2": 3},
    }
    assert data["capacity"] == 100
    assert [p["proc"] for p in data["procs"]] == [
        "media-h1-0-bbbbbb",
        "media-h2-0-cccccc",
        "web-h1-10-aaaaaa",
    ]
    media, _, web_ = data["procs"]
    assert media["role"] == "media" and media["host"] == "h1" and media["at"] == 101.0
    assert media["calls"] == {"websocket": 2, "sip": 1, "webrtc": 0}
    assert media["started"] == {"websocket": 7, "sip": 3}
    assert media["ended"]["websocket"] == 5
    assert media["failed"] == {"failed": 3, "no_answer": 1}, "summed over the call types"
    assert media["frames_in"] == 1500 and media["frames_out"] == 800
    assert media["dropped"] == {"rtc_sender": 4}
    assert (media["cpu"], media["rss"], media["start"], media["pressure"]) == (12.5, 150e6, 50.0, 0.25)
    assert media["capacity"] == 50
    # Histograms are summed over their labels: per-bucket counts (the last is +Inf) and the sum.
    assert media["histograms"]["setup"] == {
        "bounds": [0.1, 1.0],
        "counts": [1, 1, 1],
        "sum": pytest.approx(5.55),
    }
    assert media["histograms"]["asr_final"] == {"bounds": [0.5, 1.0], "counts": [0, 0, 0], "sum": 0.0}
    assert "command" not in media["histograms"]
    assert web_["role"] == "web" and web_["host"] == "h1", (
        "from the process id when pbx_process_info is absent"
    )
    assert web_["connections"] == {"websocket": 3} and "calls" not in web_
    assert web_["failed"] == {"no_capacity": 2} and web_["dropped"] == {"slow_client": 9}
    assert web_["histograms"]["command"]["counts"] == [1, 1, 0]
    json.dumps(data, allow_nan=False)  # the page gets plain JSON


def test_host_from_an_id_with_dashes_and_from_an_odd_id() -> None:
    data = dashboard.summarize(
        [media_snapshot("media-my-box-2-3-dddddd", None), media_snapshot("worker1", None)], now=1.0
    )
    assert {p["proc"]: p["host"] for p in data["procs"]} == {
        "media-my-box-2-3-dddddd": "my-box-2",
        "worker1": "",
    }
    assert data["active"]["by_host"] == {"my-box-2": 3, "": 3}


def test_malformed_snapshots_and_families_are_left_out() -> None:
    good = media_snapshot("media-h-0-eeeeee", "h")
    broken_family = media_snapshot("media-h-1-ffffff", "h")
    for family in broken_family["families"]:
        if family["name"] == "pbx_calls_failed_total":
            family["labels"] = ["kind"]  # another version's labels: no `reason`
        if family["name"] == "pbx_call_setup_seconds":
            family["series"][0][1] = [1]  # counts that do not match the bounds
        if family["name"] == "pbx_process_resident_memory_bytes":
            family["series"][0][1] = float("nan")
    snaps = [
        good,
        broken_family,
        {"proc": "x"},  # no role
        {"proc": "y", "role": "media", "at": 1.0, "families": 3},
        {"proc": "z", "role": "media", "at": "soon", "families": []},
        "not a dict",
    ]
    data = dashboard.summarize(snaps, now=1.0)  # type: ignore[arg-type]
    assert [p["proc"] for p in data["procs"]] == ["media-h-0-eeeeee", "media-h-1-ffffff"]
    kept = data["procs"][1]
    assert "failed" not in kept and "setup" not in kept["histograms"] and "rss" not in kept
    assert kept["calls"]["websocket"] == 2 and kept["cpu"] == 12.5, "the rest is kept"
    json.dumps(data, allow_nan=False)


# --- the routes ------------------------------------------------------------------------------------------


@dataclass
class FakeHub:
    redis: Any
    keys: Keys
    proc_id: str = "web-h-1-abcdef"


def make_app(hub: FakeHub, token: str = "") -> web.Application:
    """The dashboard's routes behind the middlewares as `create_app` orders them."""
    middlewares = [errors_middleware, auth.auth_middleware(token)] if token else [errors_middleware]
    app = web.Application(middlewares=middlewares)
    app[HUB] = hub  # type: ignore[assignment]
    dashboard.setup(app)
    return app


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    server = fakeredis.FakeServer()
    r = fakeredis.FakeAsyncRedis(server=server)
    r.server = server  # type: ignore[attr-defined]
    yield r
    await r.aclose()


async def test_data_has_every_published_process_and_this_one(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "REUSE", 60.0)  # a slow run must not see the answer age in between
    keys = Keys("t:")
    hub = FakeHub(redis, keys)
    await redis.set(keys.metrics("media-h-0-111111"), metrics.pack(media_snapshot("media-h-0-111111", "h")))
    await redis.set(keys.metrics(hub.proc_id), metrics.pack(web_snapshot(hub.proc_id, at=1.0)))  # stale own
    await redis.set(keys.metrics("corrupt"), b"\xc1")
    async with TestClient(TestServer(make_app(hub), host="127.0.0.1")) as client:
        resp = await client.get("/dashboard/data")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        data = await resp.json()
        assert [p["proc"] for p in data["procs"]] == ["media-h-0-111111", hub.proc_id]
        own = data["procs"][1]
        assert own["at"] > 1.0 and own["rss"] > 10e6, "this process's own figures, fresh from memory"
        assert data["active"]["total"] == 3

        # Within REUSE seconds the same answer, without reading Redis again.
        await redis.delete(keys.metrics("media-h-0-111111"))
        assert (await (await client.get("/dashboard/data")).json())["at"] == data["at"]
        client.app[dashboard.DASHBOARD]._built -= dashboard.REUSE  # as if REUSE seconds had passed
        again = await (await client.get("/dashboard/data")).json()
        assert [p["proc"] for p in again["procs"]] == [hub.proc_id]

        page = await client.get("/dashboard")
        assert page.status == 200 and page.content_type == "text/html"
        assert "/static/dashboard.js" in await page.text()


async def test_redis_down_is_a_503_json_error(redis: fakeredis.FakeAsyncRedis) -> None:
    redis.server.connected = False  # type: ignore[attr-defined]
    async with TestClient(TestServer(make_app(FakeHub(redis, Keys("t:"))), host="127.0.0.1")) as client:
        resp = await client.get("/dashboard/data")
        assert resp.status == 503
        body = await resp.json()
        assert set(body) == {"error", "code", "details"} and body["code"] == "SERVICE_UNAVAILABLE"
        redis.server.connected = True  # type: ignore[attr-defined]
        assert (await client.get("/dashboard/data")).status == 200, "an error is not reused"


async def test_the_page_and_its_data_need_the_api_token(redis: fakeredis.FakeAsyncRedis) -> None:
    app = make_app(FakeHub(redis, Keys("t:")), token=TOKEN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/dashboard", "/dashboard/data"):
            resp = await client.get(path)
            assert resp.status == 401 and (await resp.json())["code"] == "UNAUTHORIZED"
            assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status == 401
            assert (await client.get(path, params={"token": TOKEN})).status == 200
            assert (await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
