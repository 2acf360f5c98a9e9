"""A media process: claims calls from the dispatch stream and runs them on one event loop and one clock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import msgpack
from redis.exceptions import RedisError, ResponseError

from common import events, reaper, wire
from common.backoff import Backoff
from common.bus import Outbox, new_proc_id, read_inbox
from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.headroom import install_stall_knob
from common.keys import DISPATCH_GROUP, Keys
from common.liveness import DeathWatch, Heartbeat
from common.logs import call_id_var
from common.metrics import redis_error
from common.peerlink import InboxCursor, Links
from common.protocol import server_track
from common.redisconn import connect
from common.registry import Registry
from common.tasks import TaskSet
from worker import metrics
from worker.call import precache
from worker.call.observers import not_watched
from worker.call.services import MediaServices
from worker.call.session import CallSession
from worker.load import MediaLoad
from worker.media.cache import MediaCache
from worker.media.dtmf import DtmfBank
from worker.media.offload import FrameBatcher
from worker.media.vad import SileroBatcher
from worker.packing import Packing, leave_for_its_host, origin_host
from worker.paths import MediaRoots
from worker.quota import RecorderQuota
from worker.rtc.peer import InlineEncoding, limit_host_addresses
from worker.sip.telephony import SIP, Telephony
from worker.speech.endpoints import DEFAULT_HOSTS
from worker.speech.local_asr import WhisperPool
from worker.speech.local_tts import PiperEngine
from worker.speech.smart_turn import TurnBatcher, import_graph_tools
from worker.threadprio import lower_this_thread
from worker.urlguard import WS, UrlGuard
from worker.warmup import dtmf, rnnoise, run_steps, ten_vad, webrtc_vad

log = logging.getLogger("pbx.worker.process")

TICK = 0.020
# Dispatch requests left unacknowledged this long by a consumer are taken over (its process died).
AUTOCLAIM_IDLE_MS = 3000
# A tick longer than this (ms) is logged (at most every 10 s): the next frames go out late.
SLOW_TICK_MS = 15.0
# Garbage collection cadence in ticks (automatic collection is off in media processes).
GC_YOUNG_TICKS = 10
GC_MIDDLE_TICKS = 250
GC_FULL_TICKS = 3000
# With no call the clock stops; the collector then runs every IDLE_GC_EVERY s (a full pass every
# IDLE_FULL_GC of them).
IDLE_GC_EVERY = 1.0
IDLE_FULL_GC = 60
# Seconds between heartbeats (and frontend liveness checks).
HEARTBEAT_EVERY = 0.8
# Dispatch requests read at once.
CLAIM_BATCH = 8
# How long (ms) a media process that is not the packing target waits for the next request when none waited
# at its last look (worker/packing.py, Packing.overdue), as long as the target's blocking read.
QUIET_WAIT_MS = 1000
# Seconds old at most the heartbeats may be when a process takes a call of another host's frontend that its
# view says has no room, or leaves one a second time (worker/packing.py, leave_for_its_host): at most one
# read of the heartbeats per FRESH_VIEW.
FRESH_VIEW = 0.1
# Seconds a process that handed back everything it read waits before it reads again. Redis gives a new
# request to the reader that has blocked longest: without the pause this one, back at once, was first in
# line again while the other host's reader still set up its last call, and took the request back. Bursts
# of 5 (bench/hosts.py, 3 runs): a host filling up, 27-51 hand-backs for 30 calls without the pause, 5-19
# with it; calls on either host, 26-28 of 30 on their own host without it, all 30 with it.
LEAVE_PAUSE = 0.005
# Calls hung up per media tick when many end at once (a frontend died or stops): ending a call costs about
# a millisecond of loop time, and a hundred at once would hold up every other call's next frames.
HANGUPS_PER_TICK = 8
# When the loop falls this far behind the clock, it stops catching up and starts the clock afresh.
MAX_CATCH_UP = 5
# Seconds the process's own tasks get to end once cancelled on the way out.
TASKS_STOP_GRACE = 0.5


def mebibytes(mb: float) -> int:
    """A size setting in MiB as bytes (0 or less: no bound)."""
    return max(0, int(mb * 1024 * 1024))


class MediaProcess:
    """Owns up to `max_calls` calls; everything about a call happens here, on this loop."""

    def __init__(
        self, settings: Settings, proc_id: str | None = None, spawned_at: float | None = None
    ) -> None:
        self.settings = settings
        self.proc_id = proc_id or new_proc_id("media", settings.host_name)
        # When the supervisor started this process (epoch seconds): the startup time is logged from it.
        self.spawned_at = spawned_at or time.time()
        # Every default model loaded and run once (worker/warmup.py): until then, capacity 0 and no claims.
        self.warm = False
        self.keys = Keys(settings.redis_prefix)
        limit_host_addresses(settings.rtc_addresses)
        self.redis = connect(settings.redis_url or DEFAULT_LOCAL_URL)
        self.registry = Registry(self.redis, self.keys)
        # Frontends dial this process's link (common/peerlink.py); messages without one go through Redis.
        self.cursor = InboxCursor()
        self.links = Links(self.proc_id, self._deliver_batch, self.cursor)
        self.outbox = Outbox(self.redis, self.keys, links=self.links)
        self.sessions: dict[str, CallSession] = {}
        # One disk thread keeps each file's writes in order; decoding gets its own threads.
        self.io = ThreadPoolExecutor(1, thread_name_prefix="disk")
        self.cpu = ThreadPoolExecutor(2, thread_name_prefix="decode")
        # What outbound requests a call may steer (play URLs, mediaPass, provider and EOU endpoints).
        self.url_guard = UrlGuard.from_settings(settings, DEFAULT_HOSTS)
        # Directory walks (the recorder quota's, the media cache's eviction) get a thread of their own: a walk
        # of a large directory must not hold up the disk thread's recordings, dumps and plays.
        self.scan = ThreadPoolExecutor(1, thread_name_prefix="scan")
        self.cache = MediaCache(
            settings.media_cache_path,
            self.io,
            self.url_guard,
            mebibytes(settings.media_cache_max_mb),
            self.scan,
        )
        # Where clients' names may lead on disk (worker/paths.py, docs/security.md).
        self.media_roots = MediaRoots(settings.media_path, settings.media_cache_path, settings.trust_clients)
        self.recorder_quota = RecorderQuota(
            settings.recorder_path, mebibytes(settings.recorder_quota_mb), self.scan
        )
        # Model inference gets a thread of its own, so it never holds up a call's next frame.
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.silero = SileroBatcher(self._infer)
        self.whisper = WhisperPool(self._transcribe_in_thread, workers=2)
        self.denoise_thread = ThreadPoolExecutor(1, thread_name_prefix="denoise")
        self.denoise = FrameBatcher("denoise", self._denoise_in_thread)
        self.ten = FrameBatcher("ten", self._infer)
        self.dtmf = DtmfBank()
        self.asr_threads = ThreadPoolExecutor(2, thread_name_prefix="asr")
        self.tts_thread = ThreadPoolExecutor(1, thread_name_prefix="tts")
        self.piper = PiperEngine(self._tts_in_thread)
        # The end-of-turn model (6-15 ms a decision in the short window, ~26 in the 8-s one) gets a thread of
        # its own: it must not hold up the VAD; and a nicer one: when the cores are short, the calls' audio
        # goes first and the model's questions wait (left to the silence timer after a second; with
        # SMART_TURN_WINDOW=auto heard in the short window first; worker/speech/smart_turn.py).
        # It is not warmed up: ~55 MiB a process that only smart_turn calls need; the first such call of the
        # process loads it (~0.3 s) as the call is set up, long before its first pause.
        self.turn_thread = ThreadPoolExecutor(1, thread_name_prefix="turn", initializer=lower_this_thread)
        self.turn = TurnBatcher(self._turn_in_thread, settings.smart_turn_window)
        self.telephony: Telephony | None = None
        # What every call shares (worker/call/services.py), built once; `run` adds the SIP side once bound.
        self.services = MediaServices(
            settings=settings,
            proc_id=self.proc_id,
            registry=self.registry,
            io=self.io,
            cpu=self.cpu,
            url_guard=self.url_guard,
            cache=self.cache,
            media_roots=self.media_roots,
            recorder_quota=self.recorder_quota,
            silero=self.silero,
            whisper=self.whisper,
            denoise=self.denoise,
            ten=self.ten,
            dtmf=self.dtmf,
            piper=self.piper,
            turn=self.turn,
            bot_http=self.bot_http,
        )
        self._bot_http: aiohttp.ClientSession | None = None
        self.ticks = 0
        self.clock_restarts = 0
        # Longest media tick since the last heartbeat: how close the clock is to overrunning.
        self.tick_max_ms = 0.0
        self._slow_logged = 0.0
        self._accepting = True
        self._stop = asyncio.Event()
        self._tasks = TaskSet(log, f"{self.proc_id}:")
        # Heartbeats from a thread of their own (common/liveness.py); deaths confirmed before acting on them.
        self.heartbeat = Heartbeat(settings.redis_url or DEFAULT_LOCAL_URL, self.keys, self.proc_id,
                                   settings.heartbeat_ttl, stall_limit=settings.loop_stall_limit)  # fmt: skip
        self._reap_watch = DeathWatch(settings.reap_grace, quiet=settings.heartbeat_ttl)
        self._frontend_watch = DeathWatch(settings.reap_grace, quiet=settings.heartbeat_ttl)
        # Admission by headroom (common/headroom.py): capacity announced and calls claimed by load.
        self.load = MediaLoad(self, self.heartbeat.touch, self._load_changed)
        self._redis_back_at = 0.0
        self._restore_pending = False
        # Set to send the next heartbeat at once (capacity changed).
        self._beat_now = asyncio.Event()
        # Packing (worker/packing.py): only the packing target blocks on the dispatch stream.
        self.packing = Packing(
            self.registry,
            self.proc_id,
            settings.pack_calls,
            settings.pack_poll_ms,
            self._beat_fields,
            on_change=self._beat_now.set,
            host=settings.host_name,
        )
        self._ending: deque[tuple[CallSession, str, str]] = deque()
        self._ending_wake = asyncio.Event()
        self._capacity_free = asyncio.Event()
        self._capacity_free.set()
        self._calls_arrived = asyncio.Event()

    # --- wiring ------------------------------------------------------------------------------------------

    def _infer(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.inference, fn, *args)

    def _turn_in_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.turn_thread, fn, *args)

    def _denoise_in_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.denoise_thread, fn, *args)

    def _transcribe_in_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.asr_threads, fn, *args)

    def _tts_in_thread(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.tts_thread, fn, *args)

    def bot_http(self) -> aiohttp.ClientSession:
        """The HTTP client every call's mediaPass socket is opened with (one pool for the process)."""
        if self._bot_http is None:
            # No pool limit: each call's bot socket holds a connection for the whole call (aiohttp's default
            # of 100 made the 101st bot call wait, then fail).
            self._bot_http = self.url_guard.session(
                WS, connections=0, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._bot_http

    def send(self, proc: str, message: dict[str, Any]) -> None:
        if proc == self.proc_id:  # to a call of this process (a bridge of two of its calls): no round trip
            asyncio.get_running_loop().call_soon(self._deliver_batch, [message])
            return
        self.outbox.send(proc, message)

    def call_count(self) -> int:
        return len(self.sessions)

    def has_call(self, call_id: str) -> bool:
        return call_id in self.sessions

    def end_call(self, call_id: str, reason: str, initiator: str) -> None:
        session = self.sessions.get(call_id)
        if session is not None:
            session.spawn(session.hangup(reason, initiator), reason)

    def call_types(self) -> Iterator[str]:
        return (session.call_type for session in list(self.sessions.values()))

    def work_dropped(self) -> Mapping[str, int]:
        return {
            "denoise": self.denoise.dropped,
            "ten_vad": self.ten.dropped,
            "silero_vad": self.silero.dropped,
            "smart_turn": self.turn.late,
        }

    def turn_decisions(self) -> Mapping[str, int]:
        short = self.turn.shortened
        return {"whole": self.turn.decisions - short, "short": short}

    def session_ended(self, session: CallSession) -> None:
        # Full by its announced capacity, not overloaded (then every call that ends would beat at once).
        was_full = self.load.admission.admitting and len(self.sessions) >= self.capacity()
        self.sessions.pop(session.call_id, None)
        if len(self.sessions) < self.settings.max_calls:
            self._capacity_free.set()
            if was_full and self._accepting:
                self._beat_now.set()  # room again: frontends read it from the heartbeat

    def capacity(self) -> int:
        """The calls this process would carry in all, as announced in its heartbeat: 0 while it warms up or
        drains, its calls now while it is overloaded, else what its load says it can carry (at most
        MAX_CALLS)."""
        if not self._accepting or not self.warm:
            return 0
        return self.load.admission.capacity(len(self.sessions))

    def _load_changed(self) -> None:
        """It stopped or started admitting (or claiming): say so now; the dispatch loop looks again."""
        self._beat_now.set()
        self._capacity_free.set()

    def end_soon(self, session: CallSession, reason: str, initiator: str) -> None:
        """Hang a call up shortly: when many end together, a few per tick, so the others keep their pace."""
        self._ending.append((session, reason, initiator))
        self._ending_wake.set()

    async def _ender(self) -> None:
        while True:
            await self._ending_wake.wait()
            self._ending_wake.clear()
            while self._ending:
                for _ in range(min(HANGUPS_PER_TICK, len(self._ending))):
                    session, reason, initiator = self._ending.popleft()
                    if not session.ending:
                        session.spawn(session.hangup(reason, initiator), reason)
                await asyncio.sleep(TICK)

    # --- main --------------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(InlineEncoding(ThreadPoolExecutor(4, thread_name_prefix="default")))
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "drain")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "now")
        for missing in await loop.run_in_executor(self.io, self.media_roots.missing):
            # Most likely a list written with commas: MEDIA_PATH is separated by ':' (as PATH).
            log.warning("MEDIA_PATH: %s is not a directory; play finds nothing there", missing)
        await self._ensure_group()
        telephony = Telephony(self)
        try:
            await telephony.start()
            self.telephony = telephony
            self.services = dataclasses.replace(self.services, telephony=telephony)
        except OSError as exc:
            log.error("SIP is off in this process: cannot bind %s:%d (%s)", self.settings.sip_addr,
                      self.settings.sip_port, exc)  # fmt: skip
        if self.settings.media_link:
            try:
                host, port = await self.links.listen(self.settings.media_link_host)
                log.debug("link listening on %s:%d", host, port)
            except OSError as exc:
                log.error("no direct link for frontends (cannot listen on %s: %s); messages go through Redis",
                          self.settings.media_link_host, exc)  # fmt: skip
        await self._start_heartbeat()  # warm: false, capacity 0
        for name, coro in (
            ("outbox", self.outbox.run()),
            ("inbox", self._inbox()),
            ("clock", self._clock()),
            ("ender", self._ender()),
            ("heartbeat", self._heartbeat()),
            ("reaper", self._reaper()),
            ("silero", self.silero.run()),
            ("whisper", self.whisper.run()),
            ("denoise", self.denoise.run()),
            ("ten", self.ten.run()),
            ("piper", self.piper.run()),
            ("turn", self.turn.run()),
            ("metrics", metrics.publish(self, self.redis, self.keys, self.proc_id, self.settings.host_name)),
            ("recorder-quota", self.recorder_quota.run()),
        ):
            self._start(name, coro)
        warming = self._start("warm-up", self._warm_up())
        stopping = self._start("stop", self._stop.wait())
        await asyncio.wait((warming, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not self._stop.is_set():
            # Everything built so far, the models too, lives as long as the process: out of every collection.
            gc.freeze()
            gc.disable()
            # The load is measured from now: the warm-up's threads held the loop up, and that is no load.
            self._start("load", self.load.run())
            self._start("dispatch", self._dispatch())
            self._beat_now.set()
            await self._stop.wait()
        await self._shutdown()

    def _start(self, name: str, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    async def _warm_up(self) -> None:
        """Load and run every default model once (worker/warmup.py); then the process is warm."""
        began = time.perf_counter()
        steps: dict[str, Any] = {}
        if self.settings.test_warmup_seconds > 0:
            # Test knob: a model load that takes this long on the synthesis thread, as on a busy machine.
            steps["test_delay"] = self._tts_in_thread(time.sleep, self.settings.test_warmup_seconds)
        steps.update(
            piper=self.piper.warm_up(),
            whisper=self.whisper.warm_up(),
            silero=self.silero.warm_up(),
            ten=self._infer(ten_vad),
            rnnoise=self._denoise_in_thread(rnnoise),
            webrtc=asyncio.get_running_loop().run_in_executor(self.cpu, webrtc_vad),
            dtmf=asyncio.get_running_loop().run_in_executor(self.cpu, dtmf),
            smart_turn=self._turn_in_thread(import_graph_tools),
        )
        took = await run_steps(steps)
        self.warm = True
        log.info(
            "media process %s warm, capacity %d: %.0f ms after its start (warm-up %.0f ms: %s)",
            self.proc_id,
            self.settings.max_calls,
            (time.time() - self.spawned_at) * 1000,
            (time.perf_counter() - began) * 1000,
            ", ".join(f"{name} {ms:.0f}" for name, ms in took.items()),
        )

    def _request_stop(self, how: str) -> None:
        # Signal handlers only record the request; _shutdown acts on it.
        self._stop_mode = how if getattr(self, "_stop_mode", "drain") == "drain" else "now"
        self._accepting = False
        self._stop.set()
        # Capacity 0 in the heartbeat now, not at the next beat: frontends stop counting on this process.
        self._beat_now.set()

    async def _shutdown(self) -> None:
        mode = getattr(self, "_stop_mode", "now")
        deadline = time.monotonic() + (self.settings.drain_timeout if mode == "drain" else 0)
        log.info("stopping (%s) with %d calls", mode, len(self.sessions))
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pending = [s for s in list(self.sessions.values())]
        for s in pending:
            s.spawn(s.hangup("shutdown", "system"), "shutdown")
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in pending)), 5)
        if self.telephony is not None:
            await self.telephony.close()
        await self.outbox.flush()
        stuck = await self._tasks.cancel_all(TASKS_STOP_GRACE)
        if stuck:
            log.warning(
                "tasks still running %.1f s after being cancelled: %s", TASKS_STOP_GRACE, ", ".join(stuck)
            )
        await self.heartbeat.stop()  # before the key goes: a later write would bring it back
        await self.outbox.close()
        await self.links.close()
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.keys.proc(self.proc_id), self.keys.inbox(self.proc_id))
            # Leave the consumer group tidy, unless requests read during the drain still wait for a taker.
            still_pending: Any = await self.redis.xpending_range(
                self.keys.dispatch, DISPATCH_GROUP, min="-", max="+", count=1, consumername=self.proc_id
            )
            if not still_pending:
                await self.redis.xgroup_delconsumer(self.keys.dispatch, DISPATCH_GROUP, self.proc_id)
        await self.cache.close()
        if self._bot_http is not None:
            await self._bot_http.close()
        await self.redis.aclose()
        self.io.shutdown(wait=True)
        self.scan.shutdown(wait=False, cancel_futures=True)
        self.cpu.shutdown(wait=False, cancel_futures=True)
        self.inference.shutdown(wait=False, cancel_futures=True)
        self.asr_threads.shutdown(wait=False, cancel_futures=True)
        self.denoise_thread.shutdown(wait=False, cancel_futures=True)
        self.tts_thread.shutdown(wait=False, cancel_futures=True)
        self.turn_thread.shutdown(wait=False, cancel_futures=True)

    async def _ensure_group(self) -> None:
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                await self.redis.xgroup_create(self.keys.dispatch, DISPATCH_GROUP, id="0", mkstream=True)
                return
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return
                raise
            except RedisError as exc:
                redis_error("dispatch_group")
                log.warning("redis not reachable (%s); retrying", exc)
                await backoff.wait()

    # --- loops -------------------------------------------------------------------------------------------

    def _beat_fields(self) -> dict[str, Any]:
        return {
            "role": "media",
            "proc": self.proc_id,
            "pid": os.getpid(),
            # Which host: `/precache` asks one media process of each (the media cache is a host's directory).
            # (And dispatch: a frontend's calls go to a media process of its host while one has room.)
            "host": self.settings.host_name,
            "warm": self.warm,
            "calls": len(self.sessions),
            "capacity": self.capacity(),
            "max_calls": self.settings.max_calls if self._accepting else 0,
            "tick_max_ms": round(self.tick_max_ms, 2),
            "clock_restarts": self.clock_restarts,
            "load": self.load.figures(),
            # The packing target by its last look: a full target stops blocking once it reads this.
            "leads": self.packing.leads,
            # Where frontends dial this process, and the token they give (never shown by any API).
            "link": self.links.announcement(),
        }

    async def _start_heartbeat(self) -> None:
        """The first heartbeat, written before any call is taken; the thread goes on from there."""
        self.heartbeat.on_lost = self._heartbeat_lost
        self.heartbeat.on_error = self._heartbeat_failed
        self.heartbeat.publish(self._beat_fields())
        install_stall_knob(asyncio.get_running_loop(), self.settings.test_stall_seconds)
        await self.heartbeat.start()

    def _heartbeat_lost(self) -> None:
        """The heartbeat thread found our previous heartbeat gone: Redis restarted without its data."""
        self._restore_pending = True
        self._beat_now.set()

    def _heartbeat_failed(self, exc: Exception) -> None:
        redis_error("heartbeat")
        # Until Redis has been back a whole heartbeat TTL, a missing frontend heartbeat means nothing: the
        # frontends may not have beaten into it yet.
        self._redis_back_at = time.monotonic()
        self._frontend_watch.forget()
        self._reap_watch.forget()

    async def _heartbeat(self) -> None:
        """Publish the heartbeat's fields (the thread writes them) and act on what the beats found."""
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that comes as the
            # event is set (SIGINT sets it and cancels this task at once), and the process never stopped.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_EVERY):
                    await self._beat_now.wait()
            now = self._beat_now.is_set()
            self._beat_now.clear()
            self.heartbeat.publish(self._beat_fields(), now=now)
            self.tick_max_ms = 0.0
            try:
                if self._restore_pending:  # kept until it succeeds
                    await self._restore_registry()
                    self._restore_pending = False
                if time.monotonic() - self._redis_back_at > self.settings.heartbeat_ttl:
                    await self._check_frontends()
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
                self._heartbeat_failed(exc)  # counts the error

    async def _restore_registry(self) -> None:
        """Our heartbeat had vanished: Redis restarted without its data (or we stalled past the TTL).

        Write back what this process knows about its live calls, so `/call/lists`, `/call/kill` and the
        SIP forwarding work again. A call whose frontend is really gone is hung up by the frontend check.
        """
        entries = [s.registry_fields() for s in self.sessions.values() if not s.ending]
        if self.telephony is not None:
            entries += self.telephony.registry_entries()
            await self.telephony.reclaim_dialogs()
        await self.registry.restore(entries)
        await self._ensure_group()
        if entries:
            log.warning("heartbeat was gone from Redis: restored %d call entries", len(entries))

    async def _check_frontends(self) -> None:
        """Hang up calls whose frontend process died (design §5); drop the `/events` watchers it served."""
        frontends = {s.frontend for s in self.sessions.values() if s.frontend}
        for s in self.sessions.values():
            if s.observers:
                frontends |= s.observers.frontends()
        if not frontends:
            return
        began = self._frontend_watch.started()
        alive = await self.registry.live_procs(frontends)
        # Dead once confirmed (missing on two checks a grace apart, or a tombstone), not on one missing read.
        missing = frontends - alive
        gone = self._frontend_watch.confirm(missing, await self.registry.dead_procs(missing), began)
        for s in list(self.sessions.values()):
            if gone and s.observers:
                s.observers.forget(gone)
            if s.frontend in gone and not s.ending:
                log.warning("frontend %s of call %s is gone", s.frontend, s.call_id)
                s.frontend_lost()

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await reaper.reap_once(
                    self.registry, self.outbox, self.settings.claim_timeout, self._reap_watch
                )
            except RedisError:
                redis_error("reaper")
                self._reap_watch.forget()
            except Exception:
                log.exception("reaper pass crashed")

    async def _dispatch(self) -> None:
        """Claim new calls while below capacity (design §3: the consumer group gives each to one process)."""
        backoff = Backoff(0.1, 2.0)
        last_autoclaim = 0.0
        while True:
            # Far past its load limits (`claiming` off, common/headroom.py) it claims nothing: what it reads
            # goes to a process with room, or is refused at once (MediaLoad.turn_away).
            overloaded = not self.load.admission.claiming
            free = CLAIM_BATCH if overloaded else self.settings.max_calls - len(self.sessions)
            if free <= 0:
                self._capacity_free.clear()
                await self._capacity_free.wait()
                continue
            if not self._accepting:
                return
            # A small batch: fewer round trips in a burst, yet other processes still get their share.
            count = min(free, CLAIM_BATCH)
            try:
                entries: list[Any] = []
                taken_over = False
                if time.monotonic() - last_autoclaim > 1.0:
                    last_autoclaim = time.monotonic()
                    reply: Any = await self.redis.xautoclaim(
                        self.keys.dispatch,
                        DISPATCH_GROUP,
                        self.proc_id,
                        min_idle_time=AUTOCLAIM_IDLE_MS,
                        start_id="0-0",
                        count=count,
                    )
                    entries = [e for e in reply[1] if e and e[1]] if reply else []
                    taken_over = bool(entries)
                if not entries:
                    # Not the packing target: every PACK_POLL_MS, a read that does not wait takes what has
                    # waited a whole poll (the target did not take it at once).
                    blocks = await self.packing.blocks()
                    if not blocks and not await self.packing.overdue(self.keys.dispatch, QUIET_WAIT_MS):
                        await asyncio.sleep(self.packing.poll)
                        continue
                    resp: Any = await self.redis.xreadgroup(
                        DISPATCH_GROUP,
                        self.proc_id,
                        {self.keys.dispatch: ">"},
                        count=self.packing.batch(count),
                        block=self.packing.block_ms() if blocks else None,
                    )
                    entries = resp[0][1] if resp else []
                    if not entries and not blocks:
                        await asyncio.sleep(self.packing.poll)
                if entries and self._accepting and not self.load.admission.claiming:
                    await self.load.turn_away(entries)
                elif entries:
                    # (A request taken over from a dead process has waited seconds: nobody leaves it.)
                    await self._take(entries, leave=not taken_over)
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._ensure_group()
                    continue
                raise
            except RedisError as exc:
                redis_error("dispatch")
                log.warning("dispatch failed (%s)", exc)
                await backoff.wait()

    async def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]], leave: bool = False) -> None:
        """Claim a batch of dispatch requests with one pipelined round trip. With `leave`, the requests of
        another host's frontend are handed back to the stream for that host while it has room (packing.py,
        `leave_for_its_host`)."""
        left: list[tuple[bytes, dict[bytes, bytes]]] = []
        host = self.settings.host_name
        others = {origin_host(f) for _, f in entries} - {"", host}
        if leave and others and self.settings.dispatch_local_ms > 0:
            with_room = await self.packing.hosts_with_room()
            returned = any(f.get(b"passes") for _, f in entries)
            if others - with_room or returned:
                # The view may be a heartbeat and a blocking read old. Before taking a call of a host that
                # had no room by it, look again: a host that just warmed up or freed room keeps its calls.
                # Before leaving a call a second time, too: it came back, and its host may have filled up
                # meanwhile (it beats at once then), so a spilled call is left once at most, not 3 times.
                with_room = await self.packing.hosts_with_room(FRESH_VIEW)
            now_ms = int(time.time() * 1000)
            wait_ms = self.settings.dispatch_local_ms
            leaving = [leave_for_its_host(f, host, with_room, now_ms, wait_ms) for _, f in entries]
            left = [e for e, go in zip(entries, leaving, strict=True) if go]
            entries = [e for e, go in zip(entries, leaving, strict=True) if not go]
        if left:
            await self.registry.hand_back(left, counted=True)
            metrics.LEFT_FOR_HOST.labels().inc(len(left))
            if not entries:
                await asyncio.sleep(LEAVE_PAUSE)
                return
        if not self._accepting:
            # Read just as the drain began: handed straight back to the stream, for a live process.
            await self.registry.hand_back(entries)
            return
        pipe = self.redis.pipeline(transaction=False)
        for _entry_id, fields in entries:
            call_id = fields.get(b"call_id", b"").decode()
            await self.registry.claim_in(pipe, call_id, self.proc_id)
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(self.keys.dispatch, DISPATCH_GROUP, *ids)
        pipe.xdel(self.keys.dispatch, *ids)
        results = await pipe.execute()
        for (_entry_id, fields), result in zip(entries, results, strict=False):
            if result == 1:
                origin = origin_host(fields)
                where = "unknown" if not origin else "same" if origin == host else "other"
                metrics.CALLS_CLAIMED.labels(where).inc()
                self._open_session(fields)

    def _open_session(self, fields: dict[bytes, bytes]) -> None:
        call_id = fields.get(b"call_id", b"").decode()
        frontend = fields.get(b"frontend", b"").decode()
        call_type = fields.get(b"call_type", b"websocket").decode()
        try:
            created = int(fields.get(b"created_at", b"0"))
            params = msgpack.unpackb(fields.get(b"params", b"\x80"))
        except Exception:
            created, params = 0, {}
        token = call_id_var.set(call_id)
        try:
            dump = bool(params.get("dump", True))
            session = CallSession(
                self.services,
                self,
                call_id,
                call_type,
                frontend,
                dump,
                created or events.now_ms(),
                server_track(params),
            )
            self._add(session)
            self.send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.CLAIMED, "owner": self.proc_id}))
            log.info("claimed %s call from %s", call_type, frontend)
        finally:
            call_id_var.reset(token)

    async def _inbox(self) -> None:
        async for batch in read_inbox(self.redis, self.keys, self.proc_id, cursor=self.cursor):
            self._deliver_batch(batch)

    def _deliver_batch(self, batch: list[dict[str, Any]]) -> None:
        """Messages from the inbox stream or a frontend's link, in the order they were sent."""
        for m in batch:
            session = self.sessions.get(m["c"])
            if session is None:
                self._unowned(m)
                continue
            token = call_id_var.set(session.call_id)  # every log line carries the call id
            try:
                session.deliver(m["k"], m["b"])
            except Exception:
                log.exception("could not handle %s message", m["k"])
            finally:
                call_id_var.reset(token)

    def _unowned(self, m: dict[str, Any]) -> None:
        """A message for no session here: a forwarded SIP message, or a socket for an inbound call."""
        try:
            if m["k"] == SIP and self.telephony is not None:
                self.telephony.forwarded(m["b"])
            elif m["k"] == wire.CTL and m["b"].get("op") == wire.Op.ATTACH:
                self._attach(str(m["c"]), m["b"])
            elif m["k"] == wire.CTL and m["b"].get("op") == wire.Op.RESUME:
                self._not_resumed(str(m["c"]), str(m["b"].get("frontend") or ""))
            elif m["k"] == wire.CTL and m["b"].get("op") == wire.Op.PRECACHE:
                self._start("precache", precache.answer(self.services, m["b"], self.send, str(m["c"])))
            elif m["k"] == wire.CTL and m["b"].get("op") == wire.Op.WATCH:
                ended = not_watched(str(m["c"]), m["b"])
                if ended is not None:
                    self.send(*ended)
        except Exception:
            log.exception("call %s: could not handle %s message", m.get("c"), m.get("k"))

    def _not_resumed(self, call_id: str, frontend: str) -> None:
        """A new socket named a call that ended here meanwhile: it hears so, and closes."""
        if frontend:
            self.send(frontend, wire.msg(call_id, wire.EVT, events.error(
                call_id, "resume", "the call has ended", 404)))  # fmt: skip
            self.send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.CLOSE}))

    def _attach(self, call_id: str, body: dict[str, Any]) -> None:
        frontend = str(body.get("frontend") or "")
        pending = self.telephony.take(call_id) if self.telephony is not None else None
        if pending is None or not frontend:
            if frontend:
                self.send(frontend, wire.msg(call_id, wire.EVT, events.error(
                    call_id, "accept", "the inbound call is no longer waiting", 404)))  # fmt: skip
                self.send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.CLOSE}))
            return
        token = call_id_var.set(call_id)
        try:
            dump = bool(body.get("dump", True))
            session = CallSession(
                self.services, self, call_id, "sip", frontend, dump, pending.created_ms, server_track(body)
            )
            self._add(session)
            self.send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.CLAIMED, "owner": self.proc_id}))
            session.attach_incoming(pending)
            log.info("inbound SIP call attached to %s", frontend)
        finally:
            call_id_var.reset(token)

    def _add(self, session: CallSession) -> None:
        self.sessions[session.call_id] = session
        session.start()
        self._calls_arrived.set()  # the clock runs again
        if self.load.admission.admitting and len(self.sessions) == self.capacity():
            # Just full by its announced capacity (not overloaded: then its capacity is its calls, and every
            # call it still claims would beat at once): said now, so frontends refuse and other hosts'
            # processes stop leaving this host's calls for it (worker/packing.py) a beat sooner.
            self._beat_now.set()

    def _collect_garbage(self) -> None:
        """Run the cyclic garbage collector right after a tick, where the loop has the most slack.

        Left to itself, a full collection lands anywhere and stalls every call's next frame by several ms;
        here it runs in the ~19 ms between this tick and the next.
        """
        if self.ticks % GC_YOUNG_TICKS == 0:
            gen = 2 if self.ticks % GC_FULL_TICKS == 0 else 1 if self.ticks % GC_MIDDLE_TICKS == 0 else 0
            gc.collect(gen)

    async def _clock(self) -> None:
        """The media clock: every session advances one frame per 20 ms, paced to start + n × 20 ms."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        idle = 0
        while True:
            if not self.sessions and self.warm:
                # No call, nothing to pace: an idle process is not woken 50 times a second. (While warming
                # up the clock runs: the model batchers are kicked by it.)
                self._calls_arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_GC_EVERY):
                        await self._calls_arrived.wait()
                if not self.sessions:
                    idle += 1  # the collector still runs now and then (gc is off outside the clock)
                    gc.collect(2 if idle % IDLE_FULL_GC == 0 else 1)
                    continue
                next_at = loop.time()
            next_at += TICK
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                # How late the loop woke us: its lag, measured by the clock instead of a probe of its own.
                self.load.meter.lag((loop.time() - next_at) * 1000)
            elif -delay > TICK * MAX_CATCH_UP:
                # Too far behind to catch up: the ticks in between never happen, and their frames are lost.
                self.clock_restarts += 1
                skipped = int(-delay / TICK)
                metrics.FRAMES_SKIPPED.value += skipped * len(self.sessions)
                next_at = loop.time()
            elif delay < -TICK:
                # Caught up in a burst: this tick's frames leave more than one frame time after their moment.
                metrics.LATE_TICKS.value += 1
                metrics.FRAMES_LATE.value += len(self.sessions)
            if delay <= 0:
                self.load.meter.lag(-delay * 1000)
            self.ticks += 1
            began = time.perf_counter()
            for session in list(self.sessions.values()):
                if session.ending:
                    continue
                token = call_id_var.set(session.call_id)
                try:
                    session.tick()
                except Exception:
                    log.exception("media tick failed")
                    session.spawn(session.hangup("media_error", "system"), "media-error")
                finally:
                    call_id_var.reset(token)
            # The tick's frames for every call leave together, now: no linger for audio that is due.
            self.outbox.kick()
            took = (time.perf_counter() - began) * 1000
            self.tick_max_ms = max(self.tick_max_ms, took)
            metrics.TICK_TIME.observe(took / 1000)
            self.dtmf.kick()
            self.denoise.kick()
            self.ten.kick()
            self.silero.kick()
            gc_began = time.perf_counter()
            self._collect_garbage()
            gc_took = (time.perf_counter() - gc_began) * 1000
            if took + gc_took > SLOW_TICK_MS and time.monotonic() - self._slow_logged > 10:
                self._slow_logged = time.monotonic()
                log.warning(
                    "slow media tick: %.1f ms for %d calls (+%.1f ms collecting garbage)",
                    took,
                    len(self.sessions),
                    gc_took,
                )
