"""Whether a frontend takes a new call: room in the media pool, and headroom on its own event loop."""

from __future__ import annotations

from collections.abc import Callable

from common.config import Settings
from common.headroom import Admission, LoadLimits, LoadSample, LoopMeter
from frontend.limits import MediaCapacity

# Why a call was refused (`CallAdmission.refused`), in the client's `error` event.
NO_MEDIA_ROOM = (
    "no media worker has room for another call: every media process is at MAX_CALLS, at the limit of its "
    "load or draining"
)
FRONTEND_OVERLOADED = "this server is overloaded: its event loop has no headroom for another call"
# Seconds between the frontend's lag probes (5 per sample). Coarser than a media process's (25 ms): an idle
# frontend woken 40 times a second changed which gunicorn worker wins the race to accept a new connection
# (consecutive calls piled onto one frontend instead of alternating), and a frontend has no 20 ms clock.
PROBE_EVERY = 0.1


class FrontendLoad:
    """This frontend's own load (its event loop's CPU share and lag; a frontend has no media tick)."""

    def __init__(self, settings: Settings, calls: Callable[[], int], touch: Callable[[], None]) -> None:
        limits = LoadLimits.from_settings(settings)
        self.admission = Admission(
            LoadLimits(loop_busy=limits.loop_busy, lag_ms=limits.lag_ms, tick_ms=0.0, resume=limits.resume),
            name="frontend",
        )
        self.meter = LoopMeter(self._sample, calls=calls, touch=touch, probe=PROBE_EVERY)

    def _sample(self, sample: LoadSample) -> None:
        self.admission.update(sample)

    def figures(self) -> dict[str, object]:
        a = self.admission
        return {**a.sample.figures(), "pressure": round(a.pressure, 3), "admitting": a.admitting}


class CallAdmission:
    """`admit`/`release` as `MediaCapacity`, refusing too while this frontend itself is overloaded: a loop
    that lags relays every call's audio late."""

    def __init__(self, media: MediaCapacity, local: Admission) -> None:
        self.media = media
        self.local = local

    async def admit(self) -> int | None:
        if not self.local.admitting:
            return None
        return await self.media.admit()

    @property
    def refused(self) -> str:
        """Why a call is refused now, for the client's `error` event."""
        return NO_MEDIA_ROOM if self.local.admitting else FRONTEND_OVERLOADED

    def release(self, ticket: int | None) -> None:
        self.media.release(ticket)
