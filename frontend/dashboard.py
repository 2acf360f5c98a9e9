"""`GET /dashboard`, the live operations page, and `GET /dashboard/data`, the figures it polls.

The figures are the ones `/metrics` serves (every process's snapshot from Redis, this process's own fresh
from memory; frontend/metrics.py), cut down to what the page draws: for each process its gauges, and its
counters and histograms as they stand (cumulative). The page works out rates and percentiles itself from
successive answers, per process and by each snapshot's own time (`at`), so nothing here keeps state
between requests and any frontend may answer any poll. Every process publishes about once a second, so an
answer is reused for `REUSE` seconds: however many pages poll one frontend, it reads Redis at most a few
times a second.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from common import metrics
from common.metrics import PUBLISH_EVERY, REGISTRY
from frontend.keys import HUB

STATIC = Path(__file__).resolve().parent / "static"
DATA_VERSION = 1
# Seconds an answer is reused for (snapshots change once every PUBLISH_EVERY).
REUSE = 0.5

# What the page shows of each process, by the name it has in the answer.
# Gauges and counters with no label the page needs: summed over their series.
TOTALS = {
    "capacity": "pbx_calls_capacity",
    "pressure": "pbx_load_pressure",
    "rss": "pbx_process_resident_memory_bytes",
    "cpu": "pbx_process_cpu_seconds_total",
    "start": "pbx_process_start_time_seconds",
    "frames_in": "pbx_audio_frames_in_total",
    "frames_out": "pbx_audio_frames_out_total",
}
# Summed by one label.
BY_LABEL = {
    "calls": ("pbx_calls_active", "type"),
    "connections": ("pbx_frontend_connections", "type"),
    "started": ("pbx_calls_started_total", "type"),
    "ended": ("pbx_calls_ended_total", "type"),
    "failed": ("pbx_calls_failed_total", "reason"),
    "dropped": ("pbx_audio_frames_dropped_total", "reason"),
}
# Histograms, summed over their labels: per-bucket counts (not cumulative, the last is +Inf) and the sum.
HISTOGRAMS = {
    "command": "pbx_command_roundtrip_seconds",
    "setup": "pbx_call_setup_seconds",
    "asr_final": "pbx_asr_final_latency_seconds",
    "tts_first_audio": "pbx_tts_first_audio_seconds",
}
HOST_INFO = "pbx_process_info"


def _number(value: Any) -> float:
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError("not a finite number")  # JSON has no NaN; the page takes none
    return number


def _host(proc: str, families: Mapping[str, dict[str, Any]]) -> str:
    info = families.get(HOST_INFO)
    try:
        if info is not None and list(info["labels"]) == ["host"] and info["series"]:
            return str(info["series"][0][0][0])
    except (KeyError, TypeError, IndexError):
        pass
    # A process of a version without pbx_process_info: its id is `{role}-{host}-{pid or slot}-{random}`.
    parts = proc.split("-")
    return "-".join(parts[1:-2]) if len(parts) >= 4 else ""


def _by_label(family: dict[str, Any], label: str) -> dict[str, float]:
    names = [str(n) for n in family.get("labels", ())]
    at = names.index(label)  # ValueError: another version's family, left out
    out: dict[str, float] = {}
    for values, value in family["series"]:
        key = str(values[at])
        out[key] = out.get(key, 0.0) + _number(value)
    return out


def _histogram(family: dict[str, Any]) -> dict[str, Any]:
    bounds = [_number(b) for b in family["buckets"]]
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for _, series_counts, series_sum in family["series"]:
        if len(series_counts) != len(counts):
            raise ValueError("bucket counts do not match the bounds")
        for i, n in enumerate(series_counts):
            counts[i] += int(n)
        total += _number(series_sum)
    return {"bounds": bounds, "counts": counts, "sum": total}


def process(snapshot: dict[str, Any]) -> dict[str, Any]:
    """One process's figures as the page reads them (KeyError, TypeError or ValueError if the snapshot is
    malformed; a malformed family is left out, the others kept)."""
    proc, role = str(snapshot["proc"]), str(snapshot["role"])
    families = {str(f["name"]): f for f in snapshot["families"] if isinstance(f, dict) and "name" in f}
    out: dict[str, Any] = {
        "proc": proc,
        "role": role,
        "host": _host(proc, families),
        "at": _number(snapshot["at"]),
    }
    histograms: dict[str, Any] = {}
    wanted: list[tuple[str, str, str | None]] = [(name, metric, None) for name, metric in TOTALS.items()]
    wanted += [(name, metric, label) for name, (metric, label) in BY_LABEL.items()]
    for name, metric, label in wanted:
        family = families.get(metric)
        if family is None or family.get("type") not in ("gauge", "counter"):
            continue
        try:
            if label is None:
                out[name] = sum(_number(value) for _, value in family["series"])
            else:
                out[name] = _by_label(family, label)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    for name, metric in HISTOGRAMS.items():
        family = families.get(metric)
        if family is None or family.get("type") != "histogram":
            continue
        try:
            histograms[name] = _histogram(family)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    out["histograms"] = histograms
    return out


def summarize(snapshots: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
    """The answer to `/dashboard/data`: every process's figures (malformed snapshots left out), and the
    cluster's active calls by type and by host."""
    procs = []
    for snapshot in snapshots:
        try:
            procs.append(process(snapshot))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    procs.sort(key=lambda p: (p["role"], p["proc"]))
    by_type: dict[str, float] = {}
    by_host: dict[str, float] = {}
    capacity = 0.0
    for p in procs:
        if p["role"] != "media":
            continue
        capacity += p.get("capacity", 0.0)
        for call_type, n in p.get("calls", {}).items():
            by_type[call_type] = by_type.get(call_type, 0.0) + n
            by_host[p["host"]] = by_host.get(p["host"], 0.0) + n
    return {
        "v": DATA_VERSION,
        "at": now,
        "every": PUBLISH_EVERY,
        "active": {"total": sum(by_type.values()), "by_type": by_type, "by_host": by_host},
        "capacity": capacity,
        "procs": procs,
    }


class Dashboard:
    """The last answer of this frontend, reused for REUSE seconds; one read of Redis at a time."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._body: bytes = b""
        self._built = -math.inf

    async def data(self, request: web.Request) -> web.Response:
        hub = request.app[HUB]
        async with self._lock:
            if time.monotonic() - self._built > REUSE:
                # RedisError propagates: the JSON error body, 503, like every route that needs Redis.
                snapshots = [
                    s
                    for s in await metrics.read_snapshots(hub.redis, hub.keys)
                    if s.get("proc") != hub.proc_id
                ]
                snapshots.append(REGISTRY.snapshot(hub.proc_id, "web"))
                self._body = json.dumps(summarize(snapshots, time.time()), separators=(",", ":")).encode()
                self._built = time.monotonic()
            body = self._body
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


DASHBOARD = web.AppKey("dashboard", Dashboard)


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


async def _data(request: web.Request) -> web.Response:
    return await request.app[DASHBOARD].data(request)


def setup(app: web.Application) -> None:
    """Route `/dashboard` and `/dashboard/data` (behind the API token like every route but the open ones)."""
    app[DASHBOARD] = Dashboard()
    app.router.add_get("/dashboard", _page)
    app.router.add_get("/dashboard/data", _data)
