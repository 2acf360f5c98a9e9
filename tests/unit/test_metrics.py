"""The metrics library: definitions, snapshots, exposition text (checked with prometheus_client's parser),
publishing through Redis, and the frontend's command timer."""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import fakeredis
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import metrics
from common.keys import Keys
from common.metrics import MAX_SERIES, OVERFLOW, Metrics, render


def parse(text: str) -> dict[str, Any]:
    """Families by name; fails on anything the parser took for an untyped stray sample."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    strays = [name for name, f in families.items() if f.type == "untyped"]
    assert not strays, f"samples outside their family: {strays}"
    return families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse(text).values()
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def sample_registry() -> Metrics:
    m = Metrics()
    calls = m.counter("pbx_t_calls_total", "Calls.", ("type",))
    calls.labels("websocket").inc()
    calls.labels("websocket").value += 2
    calls.labels("sip").inc(0.5)
    m.gauge("pbx_t_active", "Active.").labels().set(7)
    h = m.histogram("pbx_t_seconds", "Seconds.", ("command",), buckets=(0.01, 0.1, 1.0))
    h.labels("play").observe(0.05)
    return m


def test_render_parses_with_types_labels_and_values() -> None:
    text = render([sample_registry().snapshot("media-a", "media")])
    families = parse(text)
    assert families["pbx_t_calls"].type == "counter"  # the parser names a counter without _total
    assert families["pbx_t_active"].type == "gauge"
    assert families["pbx_t_seconds"].type == "histogram"
    assert families["pbx_t_calls"].documentation == "Calls."
    got = samples(text)
    base = {"proc": "media-a", "role": "media"}
    assert got[key("pbx_t_calls_total", type="websocket", **base)] == 3
    assert got[key("pbx_t_calls_total", type="sip", **base)] == 0.5
    assert got[key("pbx_t_active", **base)] == 7
    assert got[key("pbx_t_seconds_count", command="play", **base)] == 1
    assert text.endswith("\n") and "\n\n" not in text


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    m = Metrics()
    h = m.histogram("pbx_t_latency_seconds", "Latency.", buckets=(0.001, 0.01, 0.1))
    for v in (0.001, 0.002, 0.05, 0.1, 7.0):
        h.labels().observe(v)
    got = samples(render([m.snapshot("p", "web")]))
    base = {"proc": "p", "role": "web"}
    buckets = {le: got[key("pbx_t_latency_seconds_bucket", le=le, **base)] for le in ("0.001", "0.01", "0.1")}
    assert buckets == {"0.001": 1, "0.01": 2, "0.1": 4}
    assert got[key("pbx_t_latency_seconds_bucket", le="+Inf", **base)] == 5
    assert got[key("pbx_t_latency_seconds_count", **base)] == 5
    assert got[key("pbx_t_latency_seconds_sum", **base)] == pytest.approx(7.153)
    assert h.labels().count == 5


def test_label_values_and_help_are_escaped() -> None:
    m = Metrics()
    nasty = 'a"b\\c\nd}e,f="g'
    m.counter("pbx_t_odd_total", 'Help with \\ and a\nnewline and "quotes".', ("what",)).labels(nasty).inc()
    text = render([m.snapshot('web-"x"\\y', "web")])
    assert len(text.strip().splitlines()) == 3, "nothing escaped may break a line"
    family = parse(text)["pbx_t_odd"]
    assert family.documentation == 'Help with \\ and a\nnewline and "quotes".'
    (s,) = family.samples
    assert s.labels == {"proc": 'web-"x"\\y', "role": "web", "what": nasty}


def test_many_processes_share_one_help_and_type() -> None:
    web, media = sample_registry(), sample_registry()
    media.gauge("pbx_t_media_only", "Only in media.").labels().set(1)
    snaps = [
        media.snapshot("media-1", "media"),
        web.snapshot("web-1", "web"),
        media.snapshot("media-2", "media"),
    ]
    text = render(snaps)
    assert text.count("# TYPE pbx_t_calls_total counter") == 1
    assert text.count("# HELP pbx_t_calls_total ") == 1
    got = samples(text)
    for proc, role in (("web-1", "web"), ("media-1", "media"), ("media-2", "media")):
        assert got[key("pbx_t_calls_total", type="websocket", proc=proc, role=role)] == 3
    assert [s.labels["proc"] for s in parse(text)["pbx_t_media_only"].samples] == ["media-1", "media-2"]
    # Through msgpack (as through Redis), the text is the same.
    wired = [msgpack.unpackb(metrics.pack(s), raw=False) for s in snaps]
    assert render(wired) == text


def test_malformed_snapshots_are_left_out() -> None:
    good = sample_registry().snapshot("web-ok", "web")
    fam = {"name": "pbx_t_active", "type": "gauge", "help": "", "labels": [], "series": [[[], 1]]}
    bad: list[Any] = [
        {},
        {"proc": "x"},
        {"proc": "x", "role": "web", "families": None},
        {"proc": "x", "role": "web", "families": [{"name": "bad name", "type": "gauge", "series": []}]},
        {"proc": "x", "role": "web", "families": [{**fam, "type": "summary"}]},
        {"proc": "x", "role": "web", "families": [{**fam, "name": "pbx_t_calls_total"}]},
        {"proc": "x", "role": "web", "families": [{**fam, "labels": ["a"], "series": [[[], 1]]}]},
        {"proc": "x", "role": "web", "families": [{**fam, "labels": ["proc"], "series": [[["y"], 1]]}]},
        {"proc": "x", "role": "web", "families": [{**fam, "series": [[[], "many"]]}]},
        {
            "proc": "x",
            "role": "web",
            "families": [
                {"name": "pbx_t_h", "type": "histogram", "help": "", "labels": [], "buckets": [1.0]}
                | {"series": [[[], [1, 2, 3], 0.5]]}
            ],
        },
    ]
    text = render([*bad, good])
    assert samples(text) == samples(render([good])), "only the good snapshot's series"
    assert render([]) == ""


def test_special_values() -> None:
    m = Metrics()
    g = m.gauge("pbx_t_g", "G.", ("k",))
    g.labels("nan").set(math.nan)
    g.labels("inf").set(math.inf)
    g.labels("ninf").set(-math.inf)
    g.labels("frac").set(0.25)
    g.labels("big").set(1e300)
    got = samples(render([m.snapshot("p", "web")]))
    assert math.isnan(got[key("pbx_t_g", k="nan", proc="p", role="web")])
    assert got[key("pbx_t_g", k="inf", proc="p", role="web")] == math.inf
    assert got[key("pbx_t_g", k="ninf", proc="p", role="web")] == -math.inf
    assert got[key("pbx_t_g", k="frac", proc="p", role="web")] == 0.25
    assert got[key("pbx_t_g", k="big", proc="p", role="web")] == 1e300


# What the hand-written renderer printed for `golden_snapshots()` before /metrics was rendered with
# prometheus_client. The text need not match byte for byte (prometheus_client sorts label names and writes
# 3 as 3.0); the HELP and TYPE lines, every series's name, labels (`le` included) and value, and their order
# must.
GOLDEN = r"""# HELP pbx_t_failed_total Calls that failed.
# TYPE pbx_t_failed_total counter
pbx_t_failed_total{proc="media-1",role="media",type="sip",reason="rejected"} 2
pbx_t_failed_total{proc="media-1",role="media",type="_other",reason="worker_lost"} 1
pbx_t_failed_total{proc="media-2",role="media",type="sip",reason="rejected"} 2
pbx_t_failed_total{proc="media-2",role="media",type="_other",reason="worker_lost"} 1
pbx_t_failed_total{proc="web-1",role="web",type="webrtc",reason="failed"} 0.5
# HELP pbx_t_active Calls now.
# TYPE pbx_t_active gauge
pbx_t_active{proc="media-1",role="media"} 3
pbx_t_active{proc="media-2",role="media"} 3
# HELP pbx_t_tick_seconds One tick.
# TYPE pbx_t_tick_seconds histogram
pbx_t_tick_seconds_bucket{proc="media-1",role="media",le="0.0005"} 1
pbx_t_tick_seconds_bucket{proc="media-1",role="media",le="0.02"} 3
pbx_t_tick_seconds_bucket{proc="media-1",role="media",le="1"} 3
pbx_t_tick_seconds_bucket{proc="media-1",role="media",le="+Inf"} 4
pbx_t_tick_seconds_sum{proc="media-1",role="media"} 3.5242
pbx_t_tick_seconds_count{proc="media-1",role="media"} 4
pbx_t_tick_seconds_bucket{proc="media-2",role="media",le="0.0005"} 1
pbx_t_tick_seconds_bucket{proc="media-2",role="media",le="0.02"} 3
pbx_t_tick_seconds_bucket{proc="media-2",role="media",le="1"} 3
pbx_t_tick_seconds_bucket{proc="media-2",role="media",le="+Inf"} 4
pbx_t_tick_seconds_sum{proc="media-2",role="media"} 3.5242
pbx_t_tick_seconds_count{proc="media-2",role="media"} 4
# HELP pbx_t_odd Help with \\ and a\nnewline and "quotes".
# TYPE pbx_t_odd gauge
pbx_t_odd{proc="web-1",role="web",what="a\"b\\c\nd}e,f=\"g"} 1e+300
pbx_t_odd{proc="web-1",role="web",what="nan"} NaN
pbx_t_odd{proc="web-1",role="web",what="ninf"} -Inf
# HELP pbx_t_rtt_seconds Round trips.
# TYPE pbx_t_rtt_seconds histogram
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="play",le="0.001"} 0
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="play",le="0.25"} 1
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="play",le="+Inf"} 1
pbx_t_rtt_seconds_sum{proc="web-1",role="web",command="play"} 0.1
pbx_t_rtt_seconds_count{proc="web-1",role="web",command="play"} 1
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="tts",le="0.001"} 1
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="tts",le="0.25"} 1
pbx_t_rtt_seconds_bucket{proc="web-1",role="web",command="tts",le="+Inf"} 1
pbx_t_rtt_seconds_sum{proc="web-1",role="web",command="tts"} 0.0001
pbx_t_rtt_seconds_count{proc="web-1",role="web",command="tts"} 1
"""


def golden_snapshots() -> list[dict[str, Any]]:
    media = Metrics()
    failed = media.counter("pbx_t_failed_total", "Calls that failed.", ("type", "reason"))
    failed.labels("sip", "rejected").inc(2)
    failed.labels(OVERFLOW, "worker_lost").inc()
    media.gauge("pbx_t_active", "Calls now.").labels().set(3)
    tick = media.histogram("pbx_t_tick_seconds", "One tick.", buckets=(0.0005, 0.02, 1.0))
    for v in (0.0002, 0.004, 0.02, 3.5):
        tick.labels().observe(v)
    web = Metrics()
    web.counter("pbx_t_failed_total", "Calls that failed.", ("type", "reason")).labels(
        "webrtc", "failed"
    ).inc(0.5)
    odd = web.gauge("pbx_t_odd", 'Help with \\ and a\nnewline and "quotes".', ("what",))
    odd.labels('a"b\\c\nd}e,f="g').set(1e300)
    odd.labels("nan").set(math.nan)
    odd.labels("ninf").set(-math.inf)
    rtt = web.histogram("pbx_t_rtt_seconds", "Round trips.", ("command",), buckets=(0.001, 0.25))
    rtt.labels("play").observe(0.1)
    rtt.labels("tts").observe(0.0001)
    return [
        media.snapshot("media-2", "media"),
        web.snapshot("web-1", "web"),
        media.snapshot("media-1", "media"),
    ]


def test_exposition_matches_the_renderer_it_replaced() -> None:
    text = render(golden_snapshots())

    def comments(t: str) -> list[str]:
        return [line for line in t.splitlines() if line.startswith("#")]

    def series(t: str) -> list[tuple[str, dict[str, str], str]]:
        # repr: NaN equals NaN; float: the parser gives "3" as an int and "3.0" as a float.
        return [(s.name, s.labels, repr(float(s.value))) for f in parse(t).values() for s in f.samples]

    assert comments(text) == comments(GOLDEN)
    assert series(text) == series(GOLDEN)
    assert len(text.splitlines()) == len(GOLDEN.splitlines()) and text.endswith("\n")


def test_definitions_are_checked() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.counter("pbx_t_no_suffix", "x")
    with pytest.raises(ValueError):
        m.gauge("pbx-t", "x")
    with pytest.raises(ValueError):
        m.gauge("pbx_t", "x", ("proc",))
    with pytest.raises(ValueError):
        m.gauge("pbx_t", "x", ("__x",))
    with pytest.raises(ValueError):
        m.gauge("pbx_t", "x", ("a", "a"))
    with pytest.raises(ValueError):
        m.histogram("pbx_t_h", "x", ("le",))
    with pytest.raises(ValueError):
        m.histogram("pbx_t_h", "x", buckets=(1.0, 0.5))
    first = m.gauge("pbx_t_same", "x", ("a",))
    assert m.gauge("pbx_t_same", "x", ("a",)) is first, "a module imported twice gets the same family"
    with pytest.raises(ValueError):
        m.gauge("pbx_t_same", "x", ("b",))
    with pytest.raises(ValueError):
        m.counter("pbx_t_same_total", "x").labels("extra")


def test_series_per_family_are_bounded() -> None:
    m = Metrics()
    c = m.counter("pbx_t_many_total", "x", ("id",))
    for i in range(MAX_SERIES + 50):
        c.labels(f"id-{i}").inc()
    series = dict(c.items())
    assert len(series) == MAX_SERIES + 1
    assert series[(OVERFLOW,)].value == 50
    assert sum(v.value for v in series.values()) == MAX_SERIES + 50


def test_collectors_run_at_snapshot_and_a_broken_one_costs_nothing_else() -> None:
    m = Metrics()
    g = m.gauge("pbx_t_len", "x")
    things = [1, 2, 3]

    def broken() -> None:
        raise RuntimeError("boom")

    def collect() -> None:
        g.labels().set(len(things))

    m.add_collector(broken)
    m.add_collector(collect)
    got = samples(render([m.snapshot("p", "media")]))
    assert got[key("pbx_t_len", proc="p", role="media")] == 3
    m.remove_collector(collect)
    things.append(4)
    got = samples(render([m.snapshot("p", "media")]))
    assert got[key("pbx_t_len", proc="p", role="media")] == 3


def test_process_figures_and_failure_reasons() -> None:
    before = dict(metrics.CALLS_FAILED.items())
    metrics.call_failed("webrtc", "failed")
    metrics.call_failed("webrtc", "normal_clearing")  # not a failure
    metrics.call_failed("weird", "worker_lost")
    after = dict(metrics.CALLS_FAILED.items())

    def delta(*labels: str) -> float:
        old = before.get(labels)
        return after[labels].value - (old.value if old is not None else 0)

    assert delta("webrtc", "failed") == 1
    assert ("webrtc", "normal_clearing") not in after
    assert delta(OVERFLOW, "worker_lost") == 1
    got = samples(render([metrics.REGISTRY.snapshot("web-p", "web")]))
    rss = got[key("pbx_process_resident_memory_bytes", proc="web-p", role="web")]
    fds = got[key("pbx_process_open_fds", proc="web-p", role="web")]
    assert rss > 10_000_000 and fds >= 3


async def test_publish_writes_a_snapshot_with_a_ttl_and_removes_it_when_stopped() -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys("t:")
    m = Metrics()
    m.counter("pbx_t_calls_total", "x").labels().inc(4)
    await redis.set(keys.metrics("corrupt"), b"\xc1 not msgpack")
    task = asyncio.create_task(metrics.publish(redis, keys, "media-1", "media", m, every=0.02, ttl=2.0))
    try:
        for _ in range(100):
            if await redis.exists(keys.metrics("media-1")):
                break
            await asyncio.sleep(0.01)
        ttl = await redis.pttl(keys.metrics("media-1"))
        assert 0 < ttl <= 2000
        snaps = await metrics.read_snapshots(redis, keys)
        assert [s["proc"] for s in snaps] == ["media-1"], "the corrupt key is left out"
        got = samples(render(snaps))
        assert got[key("pbx_t_calls_total", proc="media-1", role="media")] == 4
        assert metrics.PROCESS_INFO.labels(socket.gethostname()).value == 1, "set by publish"
        m.counter("pbx_t_calls_total", "x").labels().inc()
        await asyncio.sleep(0.1)
        got = samples(render(await metrics.read_snapshots(redis, keys)))
        assert got[key("pbx_t_calls_total", proc="media-1", role="media")] == 5, "published again"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not await redis.exists(keys.metrics("media-1"))
    await redis.aclose()


def test_command_timer_times_acks_and_stays_bounded() -> None:
    from common import wire
    from frontend.metrics import COMMAND_SECONDS, MAX_UNACKED, CommandTimer

    timer = CommandTimer()
    count_before = COMMAND_SECONDS.labels("play").count
    body = timer.stamp({"command": "play", "url": "x"})
    assert body[wire.SEQ] == 1
    timer.acked(body[wire.SEQ])
    timer.acked(body[wire.SEQ])  # a second ack of the same command counts nothing
    timer.acked("1")
    timer.acked(None)
    assert COMMAND_SECONDS.labels("play").count == count_before + 1
    for _ in range(MAX_UNACKED * 3):
        timer.stamp({"command": "pause"})
    assert timer.waiting == MAX_UNACKED
