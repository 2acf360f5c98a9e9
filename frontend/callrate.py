"""How many new calls one client address may open: a token bucket per address, kept in Redis so that every
frontend on every host draws from the same one (`CALLS_PER_IP_PER_MIN`, `CALLS_PER_IP_BURST`).

The bucket refills at the per-minute rate and holds at most the burst. The script reads the clock from Redis
(`TIME`), so frontends whose clocks disagree still refill it at one rate. A refused call spends nothing: a
client that keeps trying still gets a call each time one more token has come in. The key lives as long as a
bucket takes to refill (burst / rate), after which a missing key and a full bucket are the same thing.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import Keys
from common.metrics import redis_error

log = logging.getLogger("pbx.frontend.callrate")

# Seconds between warnings while Redis cannot be asked (a new call meanwhile is let through).
WARN_EVERY = 10.0

# KEYS[1] the bucket; ARGV: rate (tokens a second), burst, now (seconds; empty: Redis's own clock). Returns
# {1, "0"} when a token was taken, else {0, seconds until one is there}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local taken = 0
local wait = 0
-- A millionth of a token short is rounding (the clock read, the figures stored as text), not a refusal.
if tokens >= 0.999999 then
  tokens = tokens - 1
  taken = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', at))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, string.format('%.6f', wait)}
"""
# The least wait a refusal reports: the bucket may be a rounding error short of a token.
MIN_WAIT = 0.001


class CallRate:
    """New calls per client address, shared through Redis; a rate of 0 or less means no limit."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, per_minute: float, burst: float) -> None:
        self.per_minute = per_minute
        self.burst = max(burst, 1.0)
        self.enabled = per_minute > 0
        self._keys = keys
        self._take = redis.register_script(_TAKE)
        self._warned_at = -WARN_EVERY

    async def take(self, address: str, now: float | None = None) -> float:
        """Take one call from `address`'s bucket: 0 when it may open it, else the seconds until it may.

        `now` (seconds) is for tests on a virtual clock; left out, Redis's clock counts. When Redis cannot be
        asked, the call is let through: it is about to need Redis to be registered anyway, and will get
        that step's 503 if Redis is down, which says what is wrong (a 429 would not).
        """
        if not self.enabled:
            return 0.0
        args = (self.per_minute / 60.0, self.burst, "" if now is None else repr(now))
        try:
            taken, wait = await self._take(keys=[self._keys.call_rate(address)], args=args)
        except RedisError as exc:
            redis_error("call_rate")
            if time.monotonic() - self._warned_at >= WARN_EVERY:
                self._warned_at = time.monotonic()
                log.warning("new calls let through unchecked: the per-address rate needs Redis (%s)", exc)
            return 0.0
        return 0.0 if int(taken) else max(float(wait), MIN_WAIT)
