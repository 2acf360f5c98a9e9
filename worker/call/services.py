"""What a call's parts are given instead of the media process or the whole session.

`MediaServices` holds what every call of a media process shares (models, pools, caches, the URL rule, paths
and quota): the process builds it once. `CallHooks` holds what a part may do to its own call (emit an event,
report an error, run a task, hang up). `CallHost` is the little a session asks of the process that owns it.
A part takes these (and any callbacks of its own), never the session or the process: it can be built in a
unit test from fakes, and nothing in worker/call/ imports worker.process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from common.events import SERVER_SIDE_TRACK

if TYPE_CHECKING:
    import aiohttp

    from common.config import Settings
    from common.registry import Registry
    from worker.media.cache import MediaCache
    from worker.media.dtmf import DtmfBank
    from worker.media.offload import FrameBatcher
    from worker.media.vad import SileroBatcher
    from worker.paths import MediaRoots
    from worker.quota import RecorderQuota
    from worker.sip.telephony import Telephony
    from worker.speech.local_asr import WhisperPool
    from worker.speech.local_tts import PiperEngine
    from worker.speech.smart_turn import TurnBatcher
    from worker.urlguard import UrlGuard


@dataclass(frozen=True, slots=True)
class MediaServices:
    """The media process's shared services, built once by it (`MediaProcess.services`)."""

    settings: Settings
    proc_id: str
    registry: Registry
    io: Executor  # the disk thread: each file's writes in order
    cpu: Executor  # decoding
    url_guard: UrlGuard
    cache: MediaCache
    media_roots: MediaRoots
    recorder_quota: RecorderQuota
    silero: SileroBatcher
    whisper: WhisperPool
    denoise: FrameBatcher
    ten: FrameBatcher
    dtmf: DtmfBank
    piper: PiperEngine
    turn: TurnBatcher  # smart_turn EOU's model
    # The one HTTP client of every call's mediaPass socket (made on first use).
    bot_http: Callable[[], aiohttp.ClientSession]
    # None until the SIP agent is bound, or when it cannot be (the process then runs without SIP).
    telephony: Telephony | None = None


class CallHost(Protocol):
    """What a session needs from the process that owns it."""

    @property
    def ticks(self) -> int: ...

    def send(self, proc: str, message: dict[str, Any]) -> None: ...

    def end_soon(self, session: Any, reason: str, initiator: str) -> None: ...

    def session_ended(self, session: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class CallHooks:
    """What a part of a call may do to the call it belongs to."""

    call_id: str
    emit: Callable[[dict[str, Any]], None]
    # (sender, message, code, track_id=None): an `error` event.
    error: Callable[..., None]
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    hangup: Callable[[str, str], Coroutine[Any, Any, None]]
    ending: Callable[[], bool]
    # The trackId of what the server plays (`serverSideTrack` of the call's socket).
    server_track: str = SERVER_SIDE_TRACK
