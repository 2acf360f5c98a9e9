"""The frontend process's link to Redis: its inbox, outbox, heartbeat, reaper and live client sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import reaper, wire
from common.bus import Outbox, new_proc_id, read_inbox
from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.headroom import install_stall_knob
from common.keys import Keys
from common.liveness import HEARTBEAT_EVERY, DeathWatch, Heartbeat
from common.metrics import redis_error
from common.peerlink import InboxCursor, Links, link_lookup
from common.registry import Registry
from common.tasks import TaskSet
from frontend import metrics
from frontend.admission import CallAdmission, FrontendLoad
from frontend.callrate import CallRate
from frontend.connection import CallConnection
from frontend.limits import MediaCapacity
from frontend.replies import Replies
from frontend.watch import Watches

log = logging.getLogger("pbx.frontend.hub")

# Seconds the owners get, at the end of a drain, to hang their calls up before the sockets are just closed.
SHUTDOWN_HANGUP_WAIT = 5.0


class Hub:
    """Owns everything a frontend process shares between its client connections."""

    # Set by gunicorn's worker_int hook (SIGINT/SIGQUIT): stop without draining.
    stop_now = False

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.registry = Registry(redis, self.keys)
        self.proc_id = new_proc_id("web", settings.host_name)
        # Direct links to the media processes this frontend talks to (common/peerlink.py), else Redis.
        self.cursor = InboxCursor()
        self.links = (
            Links(self.proc_id, self._deliver_batch, self.cursor, link_lookup(redis, self.keys))
            if settings.media_link
            else None
        )
        self.outbox = Outbox(redis, self.keys, links=self.links)
        # Heartbeats from a thread of their own (common/liveness.py); deaths confirmed before acting on them.
        self.heartbeat = Heartbeat(settings.redis_url or DEFAULT_LOCAL_URL, self.keys, self.proc_id,
                                   settings.heartbeat_ttl, stall_limit=settings.loop_stall_limit)  # fmt: skip
        self._reap_watch = DeathWatch(settings.reap_grace, quiet=settings.heartbeat_ttl)
        self.load = FrontendLoad(settings, lambda: len(self.connections), self.heartbeat.touch)
        # Room in the media pool and on this frontend's loop: without it, new calls are refused at once.
        self.capacity = CallAdmission(MediaCapacity(self.registry), self.load.admission)
        # New calls per client address, counted with every other frontend's.
        self.call_rate = CallRate(
            redis, self.keys, settings.calls_per_ip_per_min, settings.calls_per_ip_burst
        )
        self.connections: dict[str, CallConnection] = {}
        # The `/events/{id}` streams this frontend serves (frontend/watch.py).
        self.watches = Watches()
        # `POST /precache` requests waiting for a media process's answer (frontend/precache.py).
        self.replies = Replies()
        self._tasks = TaskSet(log, f"{self.proc_id}:")
        self.redis_ok = False
        # SIGTERM: the listener is closed, this frontend takes no new call while its calls drain. Its
        # heartbeat says so, and the other frontends stop leaving it a share of the media processes' room.
        self.draining = False
        # Short-lived work of the connections (a registry write); not cancelled on stop, so it gets done.
        self._background = TaskSet(log)

    async def start(self) -> None:
        for name, coro in (
            ("outbox", self.outbox.run()),
            ("inbox", self._inbox()),
            ("heartbeat", self._heartbeat()),
            ("load", self.load.meter.run()),
            ("reaper", self._reaper()),
            ("metrics", metrics.publish(self)),
        ):
            self._tasks.spawn(coro, name)
        # Register before serving so that media processes see this frontend alive from the first call.
        self.heartbeat.on_error = self._heartbeat_failed
        self.heartbeat.on_ok = self._heartbeat_ok
        self.heartbeat.publish(self._beat_fields())
        install_stall_knob(asyncio.get_running_loop(), self.settings.test_stall_seconds)
        self.redis_ok = await self.heartbeat.start()

    async def drain(self, timeout: float) -> None:
        """SIGTERM: no new sockets arrive any more (gunicorn closed the listener); live calls may go on
        for up to `timeout` s, then their owners hang them up, so each client gets its `hangup`."""
        self.draining = True
        self.heartbeat.publish(self._beat_fields(), now=True)
        if Hub.stop_now or not self.connections:
            return
        loop = asyncio.get_running_loop()
        log.info("draining %d calls for up to %.0fs", len(self.connections), timeout)
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline and not Hub.stop_now:
            await asyncio.sleep(0.1)
        for conn in list(self.connections.values()):
            conn.shutdown()
        await self.outbox.flush()
        deadline = loop.time() + SHUTDOWN_HANGUP_WAIT
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.watches.end_all()
        for conn in list(self.connections.values()):
            await conn.server_close()
        await self.outbox.flush()
        await self._tasks.cancel_all(None)
        await self.heartbeat.stop()  # before the key goes: a later write would bring it back
        await self.outbox.close()
        if self.links is not None:
            await self.links.close()
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.keys.proc(self.proc_id), self.keys.inbox(self.proc_id))

    def background(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run short-lived work as a task named `name`, referenced until it ends, its failure logged."""
        return self._background.spawn(coro, name)

    def send(self, proc: str, message: dict[str, Any]) -> None:
        self.outbox.send(proc, message)

    async def replace(self, old: CallConnection, wait: float = 2.0) -> None:
        """Close `old`, a resumable call's socket that a new one replaces (it tells the owner what it
        wrote), and wait until it is out of the table."""
        old.replace()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.connections.get(old.call_id) is old and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.connections.get(old.call_id) is old:
            del self.connections[old.call_id]

    def _beat_fields(self) -> dict[str, Any]:
        return {
            "role": "web",
            "proc": self.proc_id,
            "calls": len(self.connections),
            "load": self.load.figures(),
            "draining": self.draining,
        }

    def _heartbeat_failed(self, exc: Exception) -> None:
        redis_error("heartbeat")
        self.redis_ok = False
        self._reap_watch.forget()

    def _heartbeat_ok(self) -> None:
        self.redis_ok = True

    async def _heartbeat(self) -> None:
        """Publish the heartbeat's fields; the heartbeat thread writes them whatever this loop is doing."""
        while True:
            self.heartbeat.publish(self._beat_fields())
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await reaper.reap_once(
                    self.registry, self.outbox, self.settings.claim_timeout, self._reap_watch
                )
            except RedisError as exc:
                redis_error("reaper")
                log.debug("reaper pass failed: %s", exc)
                self._reap_watch.forget()
            except Exception:
                log.exception("reaper pass crashed")

    async def _inbox(self) -> None:
        async for batch in read_inbox(self.redis, self.keys, self.proc_id, cursor=self.cursor):
            self._deliver_batch(batch)

    def _deliver_batch(self, batch: list[dict[str, Any]]) -> None:
        """Messages from the inbox stream or a link, in the order they were sent."""
        for m in batch:
            try:
                self._deliver(m)
            except Exception:
                log.exception("could not deliver %s message for %s", m.get("k"), m.get("c"))

    def _deliver(self, m: dict[str, Any]) -> None:
        call_id, kind, body = m["c"], m["k"], m["b"]
        conn = self.connections.get(call_id)
        if conn is None:
            if kind == wire.OBS:
                self.watches.deliver(body)
            elif kind == wire.CTL and body.get("op") == wire.Op.PRECACHED:
                self.replies.deliver(body)
            elif kind == wire.CTL and body.get("op") == wire.Op.CLAIMED:
                # The client left before its call was claimed: tell the new owner to end it.
                self.send(body["owner"], wire.msg(call_id, wire.CTL, {"op": wire.Op.GONE}))
            return
        if kind == wire.PCM:
            conn.push_audio(body)
        elif kind == wire.EVT:
            conn.owner_event(body)
        elif kind == wire.CTL:
            conn.control(body)
        elif kind == wire.OBS:
            self.watches.deliver(body)
