"""Clean up after dead processes (design §5). Any process may run it; removal is decided by one DEL."""

from __future__ import annotations

import logging

from common import events, wire
from common.bus import Outbox
from common.liveness import DeathWatch
from common.metrics import call_failed
from common.registry import Registry

log = logging.getLogger("pbx.reaper")


def worker_lost_messages(call_id: str, started_ms: int) -> list[dict[str, object]]:
    """What a client hears when the media process that owned its call died."""
    ended = events.ended_by_system(
        call_id, "the media worker handling this call died", 500, "worker_lost", started_ms
    )
    return [
        *(wire.msg(call_id, wire.EVT, ev) for ev in ended),
        wire.msg(call_id, wire.CTL, {"op": wire.Op.CLOSE}),
    ]


async def reap_once(
    registry: Registry, outbox: Outbox, claim_timeout: float, watch: DeathWatch | None = None
) -> int:
    """One pass over the registry; returns how many calls were removed.

    With `watch`, a process whose heartbeat is missing counts as dead only once `watch` confirms it
    (missing on two passes at least its grace apart): a heartbeat written late reaps nothing. Without it, a
    missing heartbeat is a dead process at once.
    """
    began = watch.started() if watch is not None else None
    entries = await registry.owners()
    if not entries:
        if watch is not None:
            watch.confirm(set())
        return 0
    referenced = {e.owner for e in entries if e.owner} | {e.frontend for e in entries if e.frontend}
    alive = await registry.live_procs(referenced)
    if watch is not None:
        # Not yet confirmed dead: treated as alive on this pass.
        missing = referenced - alive
        alive |= missing - watch.confirm(missing, await registry.dead_procs(missing), began)
    removed = 0
    now = events.now_ms()
    for e in entries:
        if e.owner and e.owner not in alive:
            if await registry.remove(e.id):
                removed += 1
                log.warning("call %s lost its media process %s", e.id, e.owner)
                call_failed(e.call_type, "worker_lost")
                if e.frontend in alive:
                    for m in worker_lost_messages(e.id, e.created_at):
                        outbox.send(e.frontend, m)
        elif not e.owner and e.frontend not in alive and now - e.created_at > claim_timeout * 1000:
            if await registry.remove(e.id):
                removed += 1
                log.warning("pending call %s lost its frontend %s", e.id, e.frontend)
    return removed
