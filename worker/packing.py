"""Packing: new calls go to as few media processes as the load allows (docs/operations.md, "Packing").

A media process blocked on `XREADGROUP` on the dispatch stream gets its share of new calls, round-robin, and
each media process with calls pays its own media clock, its own inbox wake-ups and its share of every
frontend batch: 50 calls on two media processes cost ~1 ms of CPU per call-second more than on one
(docs/performance.md, "Low load and the setup tail"). So only one process, the packing target, blocks on the
stream; the others read it without blocking every `PACK_POLL_MS` and take what the target did not take at
once (a call then waits that long at most).

The target, which every media process works out alike from the heartbeats: among the live, warm media
processes with room (an overloaded or draining one announces none), the one with the lowest proc id that is
not yet full for packing (`PACK_CALLS` calls, or a load pressure of `PACK_PRESSURE`, measured or foreseen
from what its calls cost). When there is none (every process is full for packing, or the only candidate
went stale), every process blocks and the calls spread round-robin, as with `PACK_CALLS=0`.

With several hosts (HOST_NAME), each host packs on its own: the target is worked out among the processes of
the host (each host then has a process blocking on the stream), and a new call goes to a media process of
its frontend's host while that host has room: the dispatch request names the frontend's host (`host`), and
a process of another host that reads it hands it back to the stream (`leave_for_its_host`) for up to
LOCAL_WAIT_MS and MAX_PASSES, unless no live process of that host has room by the heartbeats. Packing onto
fewer processes saves CPU only among processes that share cores; a call whose frontend and media process
share a host saves a network hop both ways for every frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from common.headroom import TARGET_PRESSURE
from common.liveness import HEARTBEAT_EVERY, is_warm, room
from common.registry import Registry

log = logging.getLogger("pbx.worker.packing")

# Load pressure (common/headroom.py: 1 = at the admission limit) from which a process is full for packing.
# Half of the limit: the target keeps half its headroom for the calls that reach it before the others have
# read that it is full (it writes its heartbeat at once; they read the heartbeats every 0.8 s) and for the
# setup bursts (file decodes) that made the setup tail at 300 calls.
PACK_PRESSURE = 0.5
# A heartbeat this old (ms), or whose event loop had not run for this long when it was written, is stale:
# that process is not the target (heartbeats are written every 0.8 s, and live 3 s). The age is read on this
# host's clock: a host whose clock runs seconds ahead sees the other hosts' processes as stale and packs
# calls onto its own while they pack onto theirs (calls then spread over both targets, as round-robin).
STALE_MS = 2000
# The shortest poll (s), whatever PACK_POLL_MS says.
MIN_POLL = 0.005
# Seconds a target that became full for packing goes on blocking: the others read its heartbeat at most a
# heartbeat later, and until one of them blocks, new calls would wait for a poll.
HANDOVER = 2 * HEARTBEAT_EVERY
# Seconds between reads of the heartbeats while a process with a lower id warms up, or while a poller sees
# calls waiting.
WARMING_RECHECK = 0.1
# How long (ms, since the frontend's `created_at`; DISPATCH_LOCAL_MS) and how many times a request from
# another host's frontend is handed back to the stream for that host's media processes, while one of them
# has room. A hand-back costs one round trip; the bounds keep a request whose host cannot take it at once
# (its target busy with a burst, heartbeats up to a beat old) from going round for long. The age is read on
# this host's clock: a clock behind the frontend's by more than this leaves nothing (no preference), one
# ahead leaves it MAX_PASSES times at most.
LOCAL_WAIT_MS = 40.0
MAX_PASSES = 3


def full_for_packing(beat: dict[str, Any], pack_calls: int) -> bool:
    """Whether a media process has calls enough for packing: `pack_calls`, or a load pressure of
    PACK_PRESSURE, measured or foreseen."""
    calls, load = int(beat.get("calls", 0)), beat.get("load") or {}
    if calls >= pack_calls or float(load.get("pressure", 0.0)) >= PACK_PRESSURE:
        return True
    # The pressure is measured over half a second: in a burst of dear calls (WebRTC, local ASR) the target
    # would take a second's worth more before it showed. Its load's estimate of the calls it can carry at
    # TARGET_PRESSURE (`limit`, below MAX_CALLS once there is one) foresees it from what a call costs.
    limit = load.get("limit")
    if limit is None or int(limit) >= int(beat.get("max_calls", 0)):
        return False
    return calls >= int(limit) * PACK_PRESSURE / TARGET_PRESSURE


def takes_calls(beat: dict[str, Any], now_ms: int) -> bool:
    """Whether a heartbeat is of a live, warm media process with room for another call."""
    if beat.get("role") != "media" or not is_warm(beat) or room(beat) <= 0:
        return False
    beat_at = int(beat.get("beat_at", now_ms))
    return now_ms - beat_at <= STALE_MS and beat_at - int(beat.get("loop_at", beat_at)) <= STALE_MS


def warming(beat: dict[str, Any]) -> bool:
    """Whether a heartbeat is of a media process that is still loading its models (it takes calls soon)."""
    return beat.get("role") == "media" and not is_warm(beat)


def packing_target(
    beats: list[dict[str, Any]], pack_calls: int, now_ms: int, host: str | None = None
) -> str | None:
    """The proc id of the packing target among `beats` (heartbeats), or None: every process reads. With
    `host`, among that host's processes only (each host packs on its own)."""
    candidates = []
    for beat in beats:
        try:
            if host is not None and beat.get("host", "") != host:
                continue
            if takes_calls(beat, now_ms) and not full_for_packing(beat, pack_calls):
                candidates.append(str(beat["proc"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # not a heartbeat this version writes: it is nobody's target
    return min(candidates, default=None)


def hosts_with_room(beats: list[dict[str, Any]], now_ms: int) -> set[str]:
    """The hosts (HOST_NAME) with a live, warm media process with room, by `beats`."""
    out = set()
    for beat in beats:
        try:
            if takes_calls(beat, now_ms) and beat.get("host"):
                out.add(str(beat["host"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def origin_host(fields: dict[bytes, bytes]) -> str:
    """The host of the frontend that asked for a call (a dispatch request's `host`); "" if it does not say."""
    return fields.get(b"host", b"").decode("utf-8", "replace")


def leave_for_its_host(
    fields: dict[bytes, bytes], host: str, with_room: set[str], now_ms: int, wait_ms: float = LOCAL_WAIT_MS
) -> bool:
    """Whether a media process of `host` leaves a dispatch request (`fields`) for its frontend's host: the
    request names another host, a process of that host has room (`with_room`), and it has waited less than
    `wait_ms` and been left fewer than MAX_PASSES times."""
    try:
        origin = origin_host(fields)
        if not origin or origin == host or origin not in with_room:
            return False
        if int(fields.get(b"passes", b"0")) >= MAX_PASSES:
            return False
        return now_ms - int(fields.get(b"created_at", b"0")) < wait_ms
    except (ValueError, UnicodeDecodeError):
        return False


class Packing:
    """One media process's side of packing: whether it reads the dispatch stream blocking (it is the target,
    or there is none), from the heartbeats read at most once a heartbeat and its own fields (`own`, fresh).

    `on_change` is called when the process becomes full for packing or stops being so: its heartbeat should
    say so now, so the next target takes over sooner. `host` is this process's host (HOST_NAME): the target
    is one of its processes, and `hosts_with_room` says which hosts' processes a request is left for.
    """

    def __init__(
        self,
        registry: Registry,
        proc_id: str,
        pack_calls: int,
        poll_ms: float,
        own: Callable[[], dict[str, Any]],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        host: str | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.proc_id = proc_id
        self.pack_calls = pack_calls
        # Seconds between two reads of a process that is not the target.
        self.poll = max(MIN_POLL, poll_ms / 1000)
        self.own = own
        self.on_change = on_change
        self._clock = clock
        self._beats: list[dict[str, Any]] = []
        self._read_at = float("-inf")
        self._full = False
        self._lead_until = float("-inf")
        self._first_seen: bytes | None = None
        self._provisional = False
        self.target: str | None = None

    @property
    def on(self) -> bool:
        return self.pack_calls > 0

    async def blocks(self) -> bool:
        """Whether this process's next read of the dispatch stream blocks (else it polls)."""
        if not self.on:
            return True
        own = self.own()
        full = full_for_packing(own, self.pack_calls)
        every = HEARTBEAT_EVERY
        handing_over = full and self._clock() < self._lead_until
        if self.target not in (None, self.proc_id) and (self._first_seen is not None or handing_over):
            # A request was waiting at this poller's last look: calls are arriving faster than the target
            # takes them at once, and it may be filling up with them; or this process just filled up as the
            # target and blocks until the next one says it does. Read the heartbeats more often, so the
            # next target blocks soon after the target fills up and the full one stops soon after that,
            # instead of a heartbeat later.
            every = WARMING_RECHECK
        if full != self._full or self._clock() - self._read_at >= every:
            # (Read at once when this process fills up: who takes over is decided on a view that may be a
            # blocking read (1 s) older than a heartbeat, from before the others were warm.)
            self._beats = await self.registry.procs()
            self._read_at = self._clock()
        changed = full != self._full
        self._full = full
        beats = [b for b in self._beats if isinstance(b, dict) and b.get("proc") != self.proc_id]
        target = packing_target([*beats, own], self.pack_calls, int(time.time() * 1000), self.host)
        if target != self.target:
            log.debug("packing target: %s", target or "none (every media process reads)")
            if self.proc_id in (target, self.target):
                changed = True  # its heartbeat's `leads` changes: said at once, so a full target lets go
            self.target = target
        if changed:
            self.on_change()
        self._provisional = False
        if target is None or target == self.proc_id:
            self._lead_until = self._clock() + HANDOVER
            if target is not None and any(warming(b) and str(b.get("proc")) < target for b in beats):
                # The target only while a lower one warms up (all start together): look again soon, and
                # block no longer than that, or the first calls would spread over both (read round-robin
                # for up to a second by a process whose view says the lower one is still cold).
                self._provisional = True
                self._read_at = min(self._read_at, self._clock() - HEARTBEAT_EVERY + WARMING_RECHECK)
            return True
        # Just filled up as the target: on until the next target has read so and blocks (its heartbeat says
        # it `leads`), HANDOVER at most. (One that finds a lower-id target stops at once: that one blocks
        # already.)
        if full and any(str(b.get("proc")) == target and b.get("leads") for b in beats):
            self._lead_until = float("-inf")
        return full and self._clock() < self._lead_until

    def batch(self, count: int) -> int:
        """How many requests a read may claim: `count`, but one at a time for a full target that goes on
        blocking until the next target does (in a burst the stream holds a backlog, and it would otherwise
        take a batch every few milliseconds of the handover)."""
        if self.on and self._full and self.target not in (None, self.proc_id):
            return 1
        return count

    @property
    def leads(self) -> bool:
        """Whether this process is the packing target by its last look (its heartbeat says so)."""
        return self.on and self.target == self.proc_id

    async def hosts_with_room(self, max_age: float = HEARTBEAT_EVERY) -> set[str]:
        """The hosts with a media process with room, by the heartbeats (read again when older than
        `max_age` seconds; this process's own fields fresh)."""
        if self._clock() - self._read_at >= max_age:
            self._beats = await self.registry.procs()
            self._read_at = self._clock()
        own = self.own()
        beats = [b for b in self._beats if isinstance(b, dict) and b.get("proc") != self.proc_id]
        return hosts_with_room([*beats, own], int(time.time() * 1000))

    def block_ms(self) -> int:
        """How long a blocking read may wait: a second, but no longer than the next look at the heartbeats
        of a target only while a lower one warms up, nor of a full target handing over."""
        if self._provisional:
            return int(WARMING_RECHECK * 1000)
        if self.target in (None, self.proc_id):
            return 1000
        # Leading after filling up: until the next look at the heartbeats, which may end the handover.
        left = min(self._lead_until - self._clock(), WARMING_RECHECK)
        return max(1, int(left * 1000))

    async def overdue(self, dispatch: str, wait_ms: int = 0) -> bool:
        """For a process that does not block: whether a request waits in the dispatch stream that was there
        at the previous poll already (the target did not take it at once). A call that the target takes
        within a poll is left to it, so the calls of a quiet server do not spill onto a second process.

        When nothing waited at the previous look and `wait_ms` is given, this look waits up to that long for
        the next request to arrive (a plain `XREAD BLOCK`, which claims nothing) instead of returning at
        once: a quiet server's poller then looks about once a second, not every poll (20 looks a second
        were most of its idle CPU). Once a request has been seen, it polls as before, so what it takes in a
        burst does not change."""
        redis: Any = self.registry.redis
        if self._first_seen is None and wait_ms > 0:
            # From "0-0": a request already there is returned at once, as a look would find it.
            reply: Any = await redis.xread({dispatch: "0-0"}, count=1, block=wait_ms)
            entries: Any = reply[0][1] if reply else []
        else:
            entries = await redis.xrange(dispatch, count=1)
        first = entries[0][0] if entries else None
        waited = first is not None and first == self._first_seen
        self._first_seen = first
        return waited
