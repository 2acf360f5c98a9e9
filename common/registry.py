"""The shared registry of active calls and live processes in Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from common.errors import DuplicateCall
from common.events import rfc3339
from common.keys import DISPATCH_GROUP, INBOX_TTL, Keys
from common.redisconn import is_cluster, mget

# Take ownership only of a call that still exists and has no owner yet (single key: cluster-safe).
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'owner', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'claimed')
return 1
"""

# Update fields of a call only while it exists: an HSET after the call ended would leave a stray hash.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# Hand an inbound call that waits for its app to the frontend whose socket asked for it, once.
_ATTACH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'incoming' then return false end
redis.call('HSET', KEYS[1], 'frontend', ARGV[1], 'state', 'attached')
return redis.call('HGET', KEYS[1], 'owner')
"""

# Hand a call with `option.resume` to the frontend of a new socket on the same path; its owner, or nothing
# (no such call, not resumable, another call type, or not owned yet).
_RESUME = """
local f = redis.call('HMGET', KEYS[1], 'resume', 'call_type', 'owner')
if not f[1] or f[1] == '' or f[2] ~= ARGV[2] or not f[3] or f[3] == '' then return false end
redis.call('HSET', KEYS[1], 'frontend', ARGV[1])
return f[3]
"""


@dataclass(frozen=True, slots=True)
class CallEntry:
    id: str
    call_type: str
    created_at: int
    state: str
    owner: str
    frontend: str
    option: dict[str, Any] | None
    # Epoch ms of the first `ringing` and of the answer (None: not yet).
    ringing_at: int | None = None
    answered_at: int | None = None

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> CallEntry:
        def s(key: str) -> str:
            return h.get(key.encode(), b"").decode()

        raw_option = s("option")
        try:
            option = json.loads(raw_option) if raw_option else None
        except ValueError:
            option = None
        return cls(
            id=s("id"),
            call_type=s("call_type"),
            created_at=int(s("created_at") or 0),
            state=s("state"),
            owner=s("owner"),
            frontend=s("frontend"),
            option=option,
            ringing_at=int(s("ringing_at")) if s("ringing_at") else None,
            answered_at=int(s("answered_at")) if s("answered_at") else None,
        )

    def listing(self) -> dict[str, Any]:
        """The `/call/lists` element of the API document; `option` is `{}` (every field at its default)
        until an `invite` or `accept` gave one, so a client never finds it missing."""
        return {
            "id": self.id,
            "call_type": self.call_type,
            "created_at": rfc3339(self.created_at).replace("+00:00", "Z"),
            "option": {} if self.option is None else self.option,
        }


_OWNER_FIELDS = ("owner", "frontend", "created_at", "call_type")


@dataclass(frozen=True, slots=True)
class CallOwners:
    """A call as the reaper sees it (`Registry.owners`)."""

    id: str
    owner: str
    frontend: str
    created_at: int
    call_type: str


class Registry:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._claim = redis.register_script(_CLAIM)
        self._update = redis.register_script(_UPDATE)
        self._attach = redis.register_script(_ATTACH)
        self._resume = redis.register_script(_RESUME)

    async def _insert(self, call_id: str, fields: dict[str, str]) -> tuple[int, Any]:
        """Claim the id (refusing a live duplicate); a pipeline that writes the entry when executed."""
        created = time.time_ns() // 1_000_000
        key = self.keys.call(call_id)
        if not await self.redis.hsetnx(key, "id", call_id):
            raise DuplicateCall(f"call {call_id!r} already exists", "a live call already uses this id")
        pipe = self.redis.pipeline(transaction=False)
        mapping: dict[str, str | int] = {"created_at": created, **fields}
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.zadd(self.keys.calls, {call_id: created})
        return created, pipe

    async def register_pending(
        self, call_id: str, call_type: str, frontend: str, params: bytes | None = None, host: str = ""
    ) -> int:
        """Register a new call (refusing a live duplicate id) and, with `params`, ask for a media process;
        `host`, the frontend's HOST_NAME, goes in the request (dispatch prefers a process of that host)."""
        created, pipe = await self._insert(
            call_id, {"call_type": call_type, "state": "pending", "frontend": frontend}
        )
        if params is not None:
            fields = {
                "call_id": call_id,
                "call_type": call_type,
                "frontend": frontend,
                "created_at": created,
                "params": params,
            }
            if host:
                fields["host"] = host
            pipe.xadd(self.keys.dispatch, fields, maxlen=100_000, approximate=True)
        await pipe.execute()
        return created

    async def register_incoming(self, call_id: str, owner: str, option: dict[str, Any]) -> int:
        """Register an inbound call that the owner holds until an app's socket attaches to it."""
        fields = {
            "call_type": "sip",
            "state": "incoming",
            "owner": owner,
            "frontend": "",
            "option": json.dumps(option),
        }
        created, pipe = await self._insert(call_id, fields)
        await pipe.execute()
        return created

    async def hand_back(self, entries: list[tuple[bytes, dict[bytes, bytes]]], counted: bool = False) -> None:
        """Put dispatch requests back on the stream for another process, acknowledged and removed where they
        were read (one round trip); with `counted`, each one's `passes` goes up by one (worker/packing.py)."""
        pipe = self.redis.pipeline(transaction=False)
        for _entry_id, fields in entries:
            if counted:
                fields = {**fields, b"passes": str(int(fields.get(b"passes", b"0")) + 1).encode()}
            pipe.xadd(self.keys.dispatch, fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(self.keys.dispatch, DISPATCH_GROUP, *ids)
        pipe.xdel(self.keys.dispatch, *ids)
        await pipe.execute()

    async def attach(self, call_id: str, frontend: str) -> str | None:
        """The owner of an inbound call waiting for its app, now attached to `frontend`; None when there
        is no such call (or another socket took it)."""
        owner = await self._attach(keys=[self.keys.call(call_id)], args=[frontend])
        if not owner:
            return None
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def resume(self, call_id: str, call_type: str, frontend: str) -> str | None:
        """The owner of a live call of `call_type` with `option.resume`, now handed to `frontend`; None when
        there is no such call."""
        owner = await self._resume(keys=[self.keys.call(call_id)], args=[frontend, call_type])
        if not owner:
            return None
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def resumable(self, call_id: str) -> bool:
        return bool(await self.redis.hget(self.keys.call(call_id), "resume"))

    async def claim(self, call_id: str, owner: str) -> int:
        """1 = now ours, 0 = someone else owns it, -1 = the call is gone."""
        return int(await self._claim(keys=[self.keys.call(call_id)], args=[owner]))

    async def claim_in(self, pipe: Any, call_id: str, owner: str) -> None:
        """Queue a claim on a pipeline (this only queues it); its result is as for `claim`."""
        if is_cluster(self.redis):
            # A cluster pipeline cannot load a script: the text goes with the command.
            pipe.eval(_CLAIM, 1, self.keys.call(call_id), owner)
            return
        await self._claim(keys=[self.keys.call(call_id)], args=[owner], client=pipe)

    async def update(self, call_id: str, **fields: str | int) -> bool:
        """Set fields of a live call; False (and nothing written) when the call is gone."""
        args = [x for pair in fields.items() for x in pair]
        return bool(await self._update(keys=[self.keys.call(call_id)], args=args))

    async def get(self, call_id: str) -> CallEntry | None:
        h: Any = await self.redis.hgetall(self.keys.call(call_id))
        return CallEntry.from_hash(h) if h else None

    async def remove(self, call_id: str) -> bool:
        """Delete a call's entry; True only for the one caller that actually removed it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.call(call_id))
        pipe.zrem(self.keys.calls, call_id)
        deleted, _ = await pipe.execute()
        return bool(deleted)

    async def entries(self) -> list[CallEntry]:
        ids: list[Any] = await self.redis.zrange(self.keys.calls, 0, -1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hgetall(self.keys.call(raw.decode()))
        hashes = await pipe.execute()
        out, stale = [], []
        for raw, h in zip(ids, hashes, strict=True):
            if h:
                out.append(CallEntry.from_hash(h))
            else:
                stale.append(raw)
        if stale:
            await self.redis.zrem(self.keys.calls, *stale)
        return out

    async def owners(self) -> list[CallOwners]:
        """What the reaper needs of every call: who owns it, which frontend holds it, since when (a lighter
        read than `entries`: three fields a call, no option JSON)."""
        ids: list[Any] = await self.redis.zrange(self.keys.calls, 0, -1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hmget(self.keys.call(raw.decode()), _OWNER_FIELDS)
        rows = await pipe.execute()
        out, stale = [], []
        for raw, (owner, frontend, created, call_type) in zip(ids, rows, strict=True):
            if created is None and owner is None and frontend is None:
                stale.append(raw)
                continue
            out.append(
                CallOwners(
                    raw.decode(),
                    (owner or b"").decode(),
                    (frontend or b"").decode(),
                    int(created or 0),
                    (call_type or b"").decode(),
                )
            )
        if stale:
            await self.redis.zrem(self.keys.calls, *stale)
        return out

    async def live_procs(self, procs: set[str]) -> set[str]:
        """Those of `procs` whose heartbeat is there."""
        return await self._with_key(procs, self.keys.proc)

    async def dead_procs(self, procs: set[str]) -> set[str]:
        """Those of `procs` that left a tombstone: known to have exited, no grace needed."""
        return await self._with_key(procs, self.keys.dead)

    async def _with_key(self, procs: set[str], key: Callable[[str], str]) -> set[str]:
        if not procs:
            return set()
        ordered = sorted(procs)
        pipe = self.redis.pipeline(transaction=False)
        for p in ordered:
            pipe.exists(key(p))
        found = await pipe.execute()
        return {p for p, f in zip(ordered, found, strict=True) if f}

    async def heartbeat(self, proc: str, info: dict[str, Any], ttl: float) -> bool:
        """Refresh a process's heartbeat; False when it was not there any more (first beat, a stall longer
        than `ttl`, or a Redis that restarted without its data)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.proc(proc))
        pipe.set(self.keys.proc(proc), json.dumps(info), px=int(ttl * 1000))
        pipe.expire(self.keys.inbox(proc), INBOX_TTL)
        existed, _, _ = await pipe.execute()
        return bool(existed)

    async def restore(self, entries: list[dict[str, str | int]]) -> None:
        """Write back the entries of calls that outlived their registry (Redis restarted empty); each
        entry holds every field of the call's hash, `id` and `created_at` included."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for fields in entries:
            call_id = str(fields["id"])
            pipe.hset(self.keys.call(call_id), mapping=fields)  # type: ignore[arg-type]
            pipe.zadd(self.keys.calls, {call_id: int(fields["created_at"])})
        await pipe.execute()

    async def procs(self) -> list[dict[str, Any]]:
        keys = [k async for k in self.redis.scan_iter(match=self.keys.proc_pattern(), count=500)]
        if not keys:
            return []
        values = await mget(self.redis, keys)
        out = []
        for v in values:
            if v:
                try:
                    out.append(json.loads(v))
                except ValueError:
                    continue
        return out
