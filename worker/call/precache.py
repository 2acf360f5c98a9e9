"""`POST /precache` in a media process: a `tts` command synthesized into the media cache before any call
speaks it (active-call's route; docs/protocol.md, "active-call's API").

The frontend sends `ctl precache {frontend, req, cmd}` to one media process per host (the cache is a
directory of each host) and gets back `ctl precached {req, status, cacheKey, bytes}` or `{req, status:
"error", error, code}`. The synthesis lands where a call's `tts` with the same text and option, or the same
`cacheKey`, looks first (worker/call/speaking.py, `cache_file`), so that call plays it without asking the
provider.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from common import wire
from common.errors import PbxError
from common.protocol import Tts, decode_command
from worker.call.speaking import SpeechServices, cache_file, fill, merge, tts_provider, write_cache
from worker.media.tts_player import Segment
from worker.speech.tts import strip_emoji

log = logging.getLogger("pbx.worker.call.precache")


async def precache(services: SpeechServices, tts: Tts) -> dict[str, Any]:
    """Synthesize `tts` into the cache: `{"status": "cached" | "exists", "cacheKey", "bytes"}` (`bytes`: of
    16 kHz audio, 0 when it was there already). Raises PbxError (ProviderError) when it cannot."""
    option = merge(None, tts.option, tts.speaker)
    spoken = strip_emoji(tts.text).strip()
    if not spoken:
        raise BadText("text: nothing to speak")
    provider = tts_provider(option, services, "precache")
    path = cache_file(services.settings.media_cache_path, provider.name, spoken, option, tts.cache_key)
    key = tts.cache_key or path.stem.removeprefix("tts-")
    loop = asyncio.get_running_loop()
    if await loop.run_in_executor(services.io, path.exists):
        return {"status": "exists", "cacheKey": key, "bytes": 0}
    segment = Segment(seq=None, text=spoken)
    await fill(segment, provider.synthesize(spoken))
    audio = bytes(segment.audio)
    cache = services.cache
    stored = await loop.run_in_executor(
        services.io, write_cache, path, audio, list(segment.subtitles), cache.largest
    )
    if stored:
        cache.stored(stored)
    return {"status": "cached", "cacheKey": key, "bytes": len(audio)}


class BadText(PbxError):
    status = 400
    code = "BAD_REQUEST"


async def answer(services: SpeechServices, body: dict[str, Any], send: Any, call_id: str) -> None:
    """Run one `ctl precache` request and send its `precached` reply to the frontend that asked."""
    frontend, req = str(body.get("frontend") or ""), body.get("req")
    reply: dict[str, Any]
    try:
        cmd = decode_command(body.get("cmd"))
        if not isinstance(cmd, Tts):
            raise BadText("precache only accepts tts commands")
        reply = await precache(services, cmd)
    except PbxError as exc:
        reply = {"status": "error", "error": exc.message, "code": exc.status}
    except Exception as exc:
        log.exception("precache failed")
        reply = {"status": "error", "error": f"precache failed: {exc}", "code": 500}
    if frontend:
        send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.PRECACHED, "req": req, **reply}))
