"""The media process's figures (calls, audio, the media clock, speech providers) and its publishing loop.

Call figures are counted by the process that owns the call: a call starts when its session is created
(claimed from the dispatch stream, or an inbound SIP call attached to a socket) and ends in `hangup`.
docs/metrics.md says what each figure means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from common import metrics
from common.metrics import AUDIO_DROPPED, CALL_TYPES, REGISTRY

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from common.keys import Keys

R = REGISTRY

CALLS_STARTED = R.counter(
    "pbx_calls_started_total", "Calls whose session started in this process.", ("type",)
)
CALLS_ENDED = R.counter(
    "pbx_calls_ended_total", "Calls that ended in this process, for any reason.", ("type",)
)
CALLS_CLAIMED = R.counter(
    "pbx_calls_claimed_total",
    "Calls this process claimed from the dispatch stream, by where their frontend runs: `same` host "
    "(HOST_NAME), `other` host, or `unknown` (a frontend that does not say).",
    ("frontend_host",),
)
LEFT_FOR_HOST = R.counter(
    "pbx_dispatch_left_total",
    "Dispatch requests this process handed back to the stream for a media process of their frontend's host.",
)
SIP_FORWARDED = R.counter(
    "pbx_sip_forwarded_total",
    "SIP messages this process received for a dialog that another process owns, forwarded to that owner.",
)
CALLS_ACTIVE = R.gauge("pbx_calls_active", "Calls this process owns now (from claim to teardown).", ("type",))
CALLS_CAPACITY = R.gauge(
    "pbx_calls_capacity",
    "Calls this process announces it can carry in all: MAX_CALLS, less when its load says so, its calls "
    "while overloaded, 0 while it drains.",
)
SETUP_SECONDS = R.histogram(
    "pbx_call_setup_seconds",
    "From the owner starting on invite (or accept) to the answer going out.",
    ("type",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
FRAMES_IN = R.counter(
    "pbx_audio_frames_in_total", "Caller audio frames (socket messages or RTP packets) decoded.", ("type",)
)
FRAMES_OUT = R.counter(
    "pbx_audio_frames_out_total", "20 ms frames of server-side audio (play, tts, transfer) sent.", ("type",)
)

TICK_SECONDS = R.histogram(
    "pbx_media_tick_seconds",
    "Time one media clock tick spends advancing every call (garbage collection not included).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.04, 0.1),
)
TICKS = R.counter("pbx_media_ticks_total", "Media clock ticks.")
TICKS_LATE = R.counter(
    "pbx_media_ticks_late_total", "Media clock ticks that began more than one tick (20 ms) behind schedule."
)
CLOCK_RESTARTS = R.counter(
    "pbx_media_clock_restarts_total", "Times the media clock fell 5 ticks behind and started afresh."
)
FRAMES_LATE_TOTAL = R.counter(
    "pbx_audio_frames_late_total",
    "Frames of every call the media clock produced more than one frame time (20 ms) after their moment.",
    ("reason",),
)
WORK_DROPPED = R.counter(
    "pbx_media_work_dropped_total",
    "Frames (or Silero windows) of caller audio a batcher dropped because it was behind real time.",
    ("stage",),
)
TURN_DECISIONS = R.counter(
    "pbx_smart_turn_decisions_total",
    "End-of-turn questions the smart_turn model answered, by the window it heard them in.",
    ("window",),
)

TTS_FIRST_AUDIO = R.histogram(
    "pbx_tts_first_audio_seconds",
    "From asking the TTS provider (cache miss) to its first audio.",
    ("provider",),
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
TTS_SYNTHESES = R.counter(
    "pbx_tts_syntheses_total",
    "TTS segments completed, from the cache or by the provider.",
    ("provider", "source"),
)
ASR_FINAL_LATENCY = R.histogram(
    "pbx_asr_final_latency_seconds",
    "From the end of the recognized speech (on the call's audio clock) to its asrFinal.",
    ("provider",),
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
SPEECH_ERRORS = R.counter(
    "pbx_speech_errors_total",
    "Speech provider errors reported on a call (a failed connection, synthesis or transcription).",
    ("kind", "provider"),
)

BOT_CONNECTS = R.counter(
    "pbx_bot_connects_total",
    "mediaPass bot connections attempted, by dialect and outcome.",
    ("dialect", "outcome"),
)
BOT_ENDS = R.counter(
    "pbx_bot_ends_total",
    "mediaPass bot connections the bot ended: closed (a close frame) or dropped.",
    ("dialect", "how"),
)

RTC_SENDER_DROPS = AUDIO_DROPPED.labels("rtc_sender")
BOT_DROPPED = AUDIO_DROPPED.labels("slow_bot")
TICK_TIME = TICK_SECONDS.labels()
LATE_TICKS = TICKS_LATE.labels()
# A tick that began late: every call's frame of that tick is late. A clock restart: the ticks it skipped
# never produce their frames (one per call and tick).
FRAMES_LATE = FRAMES_LATE_TOTAL.labels("late_tick")
FRAMES_SKIPPED = AUDIO_DROPPED.labels("clock_restart")

# Every call type shows, at zero, from the first scrape: Prometheus's rate() cannot count the observations
# a series already holds when it first appears (the first calls' setups, else).
for _t in CALL_TYPES:
    CALLS_STARTED.labels(_t)
    CALLS_ENDED.labels(_t)
    FRAMES_IN.labels(_t)
    FRAMES_OUT.labels(_t)
    SETUP_SECONDS.labels(_t)


class MediaFigures(Protocol):
    """What the media process's figures are read from, at each snapshot."""

    @property
    def ticks(self) -> int: ...

    @property
    def clock_restarts(self) -> int: ...

    def capacity(self) -> int: ...

    def call_types(self) -> Iterable[str]:
        """The type of each call the process owns now."""
        ...

    def work_dropped(self) -> Mapping[str, int]:
        """What each batcher dropped so far, by `WORK_DROPPED` stage."""
        ...

    def turn_decisions(self) -> Mapping[str, int]:
        """The smart_turn model's answers so far, by `TURN_DECISIONS` window (`whole`, `short`)."""
        ...


def collect(source: MediaFigures) -> None:
    """Bring the gauges and counters read from the process up to date (before each snapshot)."""
    active = dict.fromkeys(CALL_TYPES, 0)
    for call_type in source.call_types():
        active[call_type] = active.get(call_type, 0) + 1
    for call_type, n in active.items():
        CALLS_ACTIVE.labels(call_type).set(n)
    CALLS_CAPACITY.labels().set(source.capacity())
    TICKS.labels().value = source.ticks
    CLOCK_RESTARTS.labels().value = source.clock_restarts
    for stage, dropped in source.work_dropped().items():
        WORK_DROPPED.labels(stage).value = dropped
    for window, n in source.turn_decisions().items():
        TURN_DECISIONS.labels(window).value = n


async def publish(
    source: MediaFigures, redis: aioredis.Redis, keys: Keys, proc_id: str, host: str | None = None
) -> None:
    """The process's snapshot to Redis every second, for as long as the process runs."""

    def collector() -> None:
        collect(source)

    REGISTRY.add_collector(collector)
    try:
        await metrics.publish(redis, keys, proc_id, "media", host=host)
    finally:
        REGISTRY.remove_collector(collector)


def call_ended(call_type: str, reason: str) -> None:
    CALLS_ENDED.labels(call_type).inc()
    metrics.call_failed(call_type, reason)
