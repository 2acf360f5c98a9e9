"""What gunicorn's master process does for its frontends (hooks in gunicorn.conf.py)."""

from __future__ import annotations

import logging

import redis

from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.keys import Keys

log = logging.getLogger("pbx.frontend.arbiter")

# Seconds a dead frontend's tombstone (`pbx:dead:{proc}`) stays: longer than any check takes to see it.
TOMBSTONE_TTL = 60


def forget_worker(pid: int) -> int:
    """A frontend process exited: drop its heartbeat and inbox now and leave a tombstone (it is known dead:
    no grace), so the media processes hang its calls up at their next check instead of waiting for the
    heartbeat to expire. Returns the keys deleted."""
    settings = Settings.from_env()
    keys = Keys(settings.redis_prefix)
    r = redis.Redis.from_url(settings.redis_url or DEFAULT_LOCAL_URL, socket_timeout=2)
    try:
        found = [
            k
            for pattern in (
                keys.proc(f"web-{settings.host_name}-{pid}-*"),
                keys.inbox(f"web-{settings.host_name}-{pid}-*"),
            )  # fmt: skip
            for k in r.scan_iter(match=pattern, count=1000)
        ]
        if not found:
            return 0
        beat = keys.proc("")
        pipe = r.pipeline(transaction=False)
        pipe.delete(*found)
        for k in found:
            name = k.decode() if isinstance(k, bytes) else str(k)
            if name.startswith(beat):
                pipe.set(keys.dead(name[len(beat) :]), 1, ex=TOMBSTONE_TTL)
        return int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("could not clear the heartbeat of frontend pid %d: %s", pid, exc)
        return 0
    finally:
        r.close()
