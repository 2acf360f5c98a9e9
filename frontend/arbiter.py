"""What gunicorn's master process does for its frontends (hooks in gunicorn.conf.py)."""

from __future__ import annotations

import logging

import redis

from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.keys import Keys
from common.redisconn import connect_sync

log = logging.getLogger("pbx.frontend.arbiter")

# Seconds a dead frontend's tombstone (`pbx:dead:{proc}`) stays: longer than any check takes to see it.
TOMBSTONE_TTL = 60


def forget_worker(pid: int) -> int:
    """A frontend process exited: drop its heartbeat and inbox now and leave a tombstone (it is known dead:
    no grace), so the media processes hang its calls up at their next check instead of waiting for the
    heartbeat to expire. Returns the keys deleted."""
    settings = Settings.from_env()
    keys = Keys(settings.redis_prefix)
    try:
        r = client(settings)
        ids = f"web-{settings.host_name}-{pid}-*"
        beats = list(r.scan_iter(match=keys.proc_pattern(ids), count=1000))
        inboxes = list(r.scan_iter(match=keys.inbox_pattern(ids), count=1000))
        if not beats and not inboxes:
            return 0
        # One key per DEL: on a Redis Cluster the keys of two processes may live on different nodes.
        pipe = r.pipeline(transaction=False)
        for k in beats + inboxes:
            pipe.delete(k)
        for k in beats:
            pipe.set(keys.dead(keys.proc_of(k)), 1, ex=TOMBSTONE_TTL)
        return sum(int(n) for n in pipe.execute()[: len(beats) + len(inboxes)])
    except redis.RedisError as exc:
        log.warning("could not clear the heartbeat of frontend pid %d: %s", pid, exc)
        return 0


_client: redis.Redis | None = None


def client(settings: Settings) -> redis.Redis:
    """The master's one client, made at start (`when_ready`) and kept: on a Redis Cluster it knows every
    node from then on, even when the one REDIS_URL names is down."""
    global _client
    if _client is None:
        _client = connect_sync(settings.redis_url or DEFAULT_LOCAL_URL, socket_timeout=2)
    return _client
