"""Figures of one process, published through Redis, and the Prometheus text that shows a whole cluster's.

A process keeps its figures in one `Metrics` registry (`REGISTRY`: one per OS process, as a Prometheus
client has; every frontend and media process is its own OS process). About once a second `publish` writes
`snapshot()` (a plain dict, msgpack) to `{prefix}metrics:{proc}` with a TTL of a few publishes, so a dead
process's figures disappear on their own. A frontend's `GET /metrics` reads every snapshot and `render`s
them as text exposition format 0.0.4 with prometheus_client (`SnapshotCollector` makes its metric families
of them), each series labelled with the `proc` and `role` it came from.

The hot path stays cheap: take a label set's value once (`child = FAMILY.labels("websocket")`) and then
`child.value += 1` per event (a counter in the 20 ms media loop is one attribute add). Figures kept
elsewhere (a list's length, a total some component already counts) are read by collectors, which run
only when a snapshot is taken. Values are changed from the event loop only.

Definitions of the figures each role keeps live next to its code (`frontend/metrics.py`,
`worker/metrics.py`); the ones every role shares are at the end of this module. docs/metrics.md lists
them all.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import platform
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import msgpack
import psutil
import redis.asyncio as aioredis
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from redis.exceptions import RedisError

from common import redisconn
from common.keys import Keys

log = logging.getLogger("pbx.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds between two snapshots of a process; a snapshot outlives its process by at most SNAPSHOT_TTL.
PUBLISH_EVERY = 1.0
SNAPSHOT_TTL = 5.0
# Label sets per family at most; further ones are counted together under the value OVERFLOW, so a bug
# that labels by something unbounded cannot grow a process's memory or the scrape without limit.
MAX_SERIES = 200
OVERFLOW = "_other"
# Labels that `render` adds to every series.
RESERVED_LABELS = ("proc", "role")
SNAPSHOT_VERSION = 1

CALL_TYPES = ("websocket", "webrtc", "sip")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# Buckets (seconds) that suit most latencies here: a millisecond to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# --- values ----------------------------------------------------------------------------------------------


class CounterValue:
    """One series of a counter. `value` only goes up (hot paths add to it directly)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeValue(CounterValue):
    """One series of a gauge."""

    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramValue:
    """One series of a histogram: a count per bucket (not cumulative; `render` adds them up) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, since a bucket counts the observations `le` its bound.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)


class Family(Generic[V]):
    """A named figure and its series, one per label set."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
            if label in RESERVED_LABELS:
                raise ValueError(f"{name}: label {label!r} is added to every series by render")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: duplicate label names")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], V] = {}

    def _new(self) -> V:
        raise NotImplementedError

    def labels(self, *values: str) -> V:
        """The series of one label set (created at zero the first time); keep it for a hot path."""
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
            key = tuple(str(v) for v in values)
            if key not in self._series and len(self._series) >= MAX_SERIES:
                key = (OVERFLOW,) * len(key)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new()
        return series

    def items(self) -> list[tuple[tuple[str, ...], V]]:
        return list(self._series.items())

    def clear(self) -> None:
        self._series.clear()

    def _dump(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "help": self.help,
            "labels": list(self.labelnames),
            "series": self._dump_series(),
        }

    def _dump_series(self) -> list[list[Any]]:
        raise NotImplementedError


class Counter(Family[CounterValue]):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        super().__init__(name, help, labelnames)

    def _new(self) -> CounterValue:
        return CounterValue()

    def _dump_series(self) -> list[list[Any]]:
        return [[list(k), v.value] for k, v in self._series.items()]


class Gauge(Family[GaugeValue]):
    kind = "gauge"

    def _new(self) -> GaugeValue:
        return GaugeValue()

    def _dump_series(self) -> list[list[Any]]:
        return [[list(k), v.value] for k, v in self._series.items()]


class Histogram(Family[HistogramValue]):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is the bucket label of a histogram")
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be increasing finite numbers")
        super().__init__(name, help, labelnames)
        self.bounds = bounds

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def _dump(self) -> dict[str, Any]:
        return {**super()._dump(), "buckets": list(self.bounds)}

    def _dump_series(self) -> list[list[Any]]:
        return [[list(k), list(v.counts), v.sum] for k, v in self._series.items()]


# --- the registry ----------------------------------------------------------------------------------------


class Metrics:
    """The figures of one process."""

    def __init__(self) -> None:
        self._families: dict[str, Family[Any]] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, family: Family[Any]) -> Any:
        old = self._families.get(family.name)
        if old is not None:
            same = type(old) is type(family) and old.labelnames == family.labelnames
            if not same or getattr(old, "bounds", None) != getattr(family, "bounds", None):
                raise ValueError(f"metric {family.name!r} is already defined differently")
            return old
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        family: Counter = self._add(Counter(name, help, labelnames))
        return family

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        family: Gauge = self._add(Gauge(name, help, labelnames))
        return family

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        family: Histogram = self._add(Histogram(name, help, labelnames, buckets))
        return family

    def add_collector(self, collect: Callable[[], None]) -> None:
        """`collect()` runs before each snapshot, to set figures read from elsewhere."""
        self._collectors.append(collect)

    def remove_collector(self, collect: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._collectors.remove(collect)

    def snapshot(self, proc: str, role: str) -> dict[str, Any]:
        """Every figure now, as plain lists and dicts (msgpack and JSON can carry it)."""
        for collect in list(self._collectors):
            try:
                collect()
            except Exception:  # a broken collector must not cost the other figures
                log.exception("metrics collector %r failed", collect)
        return {
            "v": SNAPSHOT_VERSION,
            "proc": proc,
            "role": role,
            "at": time.time(),
            "families": [f._dump() for f in self._families.values()],
        }


# --- exposition ------------------------------------------------------------------------------------------

# Built empty and filled with samples, so no `_created` sample is ever added (prometheus_client adds those
# only for its own counters and histograms, and for a family's `add_metric(created=...)`).
_FAMILIES: dict[str, Callable[[str, str], Metric]] = {
    "counter": CounterMetricFamily,  # named without `_total`; the exposition adds it back
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}


def _le(bound: float) -> str:
    # A bucket bound as /metrics wrote it before prometheus_client did ("1", where it writes "1.0"):
    # Prometheus before 3.0 keeps another spelling of `le` as another series.
    if math.isinf(bound):
        return "+Inf"
    return str(int(bound)) if bound.is_integer() and abs(bound) < 2**53 else repr(bound)


def _samples(family: dict[str, Any], base: dict[str, str]) -> list[Sample]:
    """The samples of one family of one snapshot (ValueError, TypeError or KeyError if malformed)."""
    name = family["name"]
    names = [str(n) for n in family.get("labels", ())]
    for label in names:
        if not _LABEL.match(label) or label.startswith("__") or label in RESERVED_LABELS or label == "le":
            raise ValueError(f"invalid label name {label!r}")

    def labels(values: Iterable[Any]) -> dict[str, str]:
        return base | dict(zip(names, map(str, values), strict=True))

    out: list[Sample] = []
    if family["type"] == "histogram":
        bounds = [float(b) for b in family["buckets"]]
        for values, counts, total in family["series"]:
            series = labels(values)
            running = 0
            # Per-bucket counts in the snapshot; the exposition's buckets are cumulative.
            for bound, n in zip([*bounds, math.inf], counts, strict=True):
                running += int(n)
                out.append(Sample(f"{name}_bucket", series | {"le": _le(bound)}, running))
            out.append(Sample(f"{name}_sum", series, float(total)))
            out.append(Sample(f"{name}_count", series, running))
    else:
        for values, value in family["series"]:
            out.append(Sample(name, labels(values), float(value)))
    return out


class SnapshotCollector(Collector):
    """Many processes' snapshots as prometheus_client's families: one per name (its type and help from the
    first snapshot, by role and then proc, that has it), each series labelled with the `proc` and `role`
    it came from. A malformed snapshot or family (another version's, or a corrupt key) is left out, never
    an error."""

    def __init__(self, snapshots: Iterable[dict[str, Any]]) -> None:
        self.snapshots = sorted(snapshots, key=lambda s: (str(s.get("role", "")), str(s.get("proc", ""))))

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for snap in self.snapshots:
            try:
                base = {"proc": str(snap["proc"]), "role": str(snap["role"])}
                listed = list(snap["families"])
            except (KeyError, TypeError):
                continue
            for family in listed:
                try:
                    name, kind = str(family["name"]), str(family["type"])
                    make = _FAMILIES.get(kind)
                    if make is None or not _NAME.match(name):
                        continue
                    if kind == "counter" and not name.endswith("_total"):
                        continue  # its samples would not match the `_total` name its HELP and TYPE get
                    metric = families.get(name)
                    if metric is None:
                        metric = families[name] = make(name, str(family.get("help", "")))
                    elif metric.type != kind:
                        continue  # another process's family of this name has another type
                    metric.samples.extend(_samples(family, base))
                except (KeyError, TypeError, ValueError):
                    continue
        yield from families.values()


def render(snapshots: Iterable[dict[str, Any]]) -> str:
    """Text exposition format 0.0.4 of many processes' snapshots (`SnapshotCollector`), written by
    prometheus_client from a registry of its own (so without its default process and platform figures)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshots))
    return generate_latest(registry).decode()


# --- through Redis ---------------------------------------------------------------------------------------


def pack(snapshot: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(snapshot, use_bin_type=True)
    return packed


async def publish(
    redis: aioredis.Redis,
    keys: Keys,
    proc: str,
    role: str,
    registry: Metrics | None = None,
    every: float = PUBLISH_EVERY,
    ttl: float = SNAPSHOT_TTL,
    host: str | None = None,
) -> None:
    """Write this process's snapshot every `every` seconds, forever; removes it when cancelled. `host`:
    HOST_NAME (Settings.host_name), the machine's host name when None."""
    registry = registry or REGISTRY
    key = keys.metrics(proc)
    BUILD_INFO.labels(_version(), platform.python_version()).set(1)
    PROCESS_INFO.labels(host or socket.gethostname()).set(1)
    try:
        while True:
            try:
                await redis.set(key, pack(registry.snapshot(proc, role)), px=int(ttl * 1000))
            except RedisError as exc:
                redis_error("metrics_publish")
                log.debug("metrics publish failed: %s", exc)
            await asyncio.sleep(every)
    finally:
        # A process that stops leaves the scrape at once; a killed one after the TTL.
        with contextlib.suppress(RedisError, TimeoutError):
            await asyncio.wait_for(redis.delete(key), 0.5)


async def read_snapshots(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every process's last published snapshot (undecodable ones left out); raises RedisError."""
    found = [k async for k in redis.scan_iter(match=keys.metrics_pattern(), count=500)]
    if not found:
        return []
    blobs = await redisconn.mget(redis, found)
    out = []
    for blob in blobs:
        if not blob:
            continue
        try:
            snap = msgpack.unpackb(blob, raw=False)
        except Exception:  # a corrupt or foreign value must not break the scrape
            continue
        if isinstance(snap, dict):
            out.append(snap)
    return out


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pbx-voice")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- figures every process keeps -------------------------------------------------------------------------

REGISTRY = Metrics()

BUILD_INFO = REGISTRY.gauge("pbx_build_info", "Always 1; the labels say what runs.", ("version", "python"))
# The host a process runs on, joined to its other figures by `proc` (`... * on (proc) group_left (host)
# pbx_process_info`): its own label on every series would change every series's identity.
PROCESS_INFO = REGISTRY.gauge("pbx_process_info", "Always 1; the host the process runs on.", ("host",))
REDIS_ERRORS = REGISTRY.counter(
    "pbx_redis_errors_total", "Redis operations that failed (and were retried or skipped).", ("op",)
)
AUDIO_DROPPED = REGISTRY.counter(
    "pbx_audio_frames_dropped_total", "Audio frames dropped on the way to a client or a peer.", ("reason",)
)
AUDIO_DROPPED.labels("redis_backlog")  # every process has an outbox (common/bus.py)
BUS_BATCHES = REGISTRY.counter(
    "pbx_bus_batches_total",
    "Batches of messages sent to another process, by path: a direct link or the Redis inbox stream.",
    ("path",),
)
LINK_DROPS = REGISTRY.counter(
    "pbx_link_drops_total",
    "Direct links between processes dropped for misbehaving (a wrong token, a backlog, a bad frame).",
)
CALLS_FAILED = REGISTRY.counter(
    "pbx_calls_failed_total",
    "Calls that ended in failure (a set-up failure, a rejection, no answer, a media or process failure).",
    ("type", "reason"),
)
# Hangup reasons that make a call failed (docs/metrics.md). `worker_lost` is counted by the reaper that
# removed the call, `no_worker` by the frontend whose call no media process claimed; the rest by the owner.
FAILURE_REASONS = frozenset(
    {
        "failed",  # invite or accept could not set the call up
        "rejected",  # the SIP callee answered non-2xx, or the app rejected an inbound call
        "no_answer",  # a SIP callee or the app did not answer in time
        "media_error",  # the call's media tick raised
        "connection_failed",  # the WebRTC peer connection failed (ICE/DTLS)
        "media_timeout",  # no media from the WebRTC peer for RTC_MEDIA_TIMEOUT
        "ack_timeout",  # no ACK for our 200 OK (RFC 3261 §13.3.1.4)
        "frontend_lost",  # the frontend holding the client socket died
        "worker_lost",  # the owning media process died
        "no_worker",  # no media process claimed the call in time
        "no_capacity",  # every media process was at MAX_CALLS or draining when the call arrived
        "rate_limited",  # its client address had opened more new calls than CALLS_PER_IP_PER_MIN lets it
        "bot_lost",  # the mediaPass bot's connection dropped
    }
)

PROCESS_RSS = REGISTRY.gauge("pbx_process_resident_memory_bytes", "Resident memory of the process.")
PROCESS_FDS = REGISTRY.gauge("pbx_process_open_fds", "Open file descriptors of the process.")
PROCESS_CPU = REGISTRY.counter("pbx_process_cpu_seconds_total", "CPU time (user + system) of the process.")
PROCESS_START = REGISTRY.gauge(
    "pbx_process_start_time_seconds", "When the process started (Unix time, seconds)."
)


def redis_error(op: str) -> None:
    """Count one failed Redis operation (`op` is a fixed name of the loop or call that failed)."""
    REDIS_ERRORS.labels(op).inc()


def call_failed(call_type: str, reason: str) -> None:
    """Count a call that ended for `reason`, if that reason is a failure."""
    if reason in FAILURE_REASONS:
        CALLS_FAILED.labels(call_type if call_type in CALL_TYPES else OVERFLOW, reason).inc()


_process: tuple[int, psutil.Process] | None = None


def _process_figures() -> None:
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:  # gunicorn forks after import
        _process = (pid, psutil.Process(pid))
    p = _process[1]
    with p.oneshot():
        PROCESS_RSS.labels().set(p.memory_info().rss)
        with contextlib.suppress(AttributeError, psutil.Error):  # num_fds is POSIX-only
            PROCESS_FDS.labels().set(p.num_fds())
        cpu = p.cpu_times()
        PROCESS_CPU.labels().value = cpu.user + cpu.system
        PROCESS_START.labels().set(p.create_time())


REGISTRY.add_collector(_process_figures)
