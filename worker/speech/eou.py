"""End of utterance: has the caller finished their turn? (`option.eou`, event `eou{completed, text}`).

Both types decide at the same moment: after a final transcript (or, without speech recognition, after the
VAD closed an utterance), once the caller has stayed silent for `timeout` ms.

- `local`: that silence is the answer: `eou{completed: true, text: <the finals since the last eou>}`.
- `tencent`: the text is POSTed as JSON `{"text", "trackId"}` to `endpoint` (with `secretId`/`secretKey`
  as `X-Secret-Id`/`X-Secret-Key` headers when set), which answers `{"completed": bool}` within `timeout`
  ms; its answer is sent as the event. If it fails or is late, an `error{sender:"eou"}` is sent and the
  local rule decides, so a broken EOU service never silences the turn-taking (nor VAD or ASR).

The endpoint is the client's, so the request obeys the process's URL rule (worker/urlguard.py); one it
refuses is reported once and the local rule decides from then on. The secrets are the option's: the
environment's Tencent credentials are only lent under TRUST_CLIENTS (the caller decides, see listener.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from common.choices import EOU_TYPES
from common.errors import ProviderError, ProviderRefused
from common.protocol import EouOption
from common.redact import redact_url
from common.tasks import TaskSet
from worker.urlguard import HTTP, UrlGuard, UrlRefused

log = logging.getLogger("pbx.worker.eou")

DEFAULT_TIMEOUT_MS = 600


class EouDetector:
    def __init__(
        self,
        option: EouOption,
        call_id: str,
        emit: Callable[[bool, str | None], None],
        on_error: Callable[[ProviderError], None],
        *,
        guard: UrlGuard,
        secret_id: str = "",
        secret_key: str = "",
    ) -> None:
        self.kind = (option.type or "local").lower()
        if self.kind not in EOU_TYPES:
            raise ValueError(
                f"option.eou.type: unknown type {option.type!r} (expected {', '.join(EOU_TYPES)})"
            )
        if self.kind == "tencent" and not option.endpoint:
            raise ValueError("option.eou.endpoint: required for the tencent type")
        self.option = option
        self.call_id = call_id
        self.timeout_ms = option.timeout if option.timeout and option.timeout > 0 else DEFAULT_TIMEOUT_MS
        self._emit = emit
        self._on_error = on_error
        self._guard = guard
        self._secret_id = option.secret_id or secret_id
        self._secret_key = option.secret_key or secret_key
        self._texts: list[str] = []
        self._pending: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, f"call:{call_id}:")
        self._session: aiohttp.ClientSession | None = None

    def speech_started(self) -> None:
        """The caller speaks again: whatever was being decided is moot."""
        self._cancel()

    def turn_may_end(self, text: str | None) -> None:
        """A final transcript (or, without ASR, the end of an utterance): start deciding."""
        if text:
            self._texts.append(text)
        self._cancel()
        self._pending = self._tasks.spawn(self._decide(), "eou")

    def _cancel(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        self._pending = None

    async def _decide(self) -> None:
        text = " ".join(self._texts) or None
        if self.kind == "tencent":
            completed = await self._ask(text)
            if completed is not None:
                if completed:
                    self._texts.clear()
                self._emit(completed, text)
                return
        await asyncio.sleep(self.timeout_ms / 1000)
        self._texts.clear()
        self._emit(True, text)

    async def _ask(self, text: str | None) -> bool | None:
        assert self.option.endpoint
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout_ms / 1000)
            self._session = self._guard.session(HTTP, timeout=timeout)
        headers = {}
        if self._secret_id:
            headers["X-Secret-Id"] = self._secret_id
        if self._secret_key:
            headers["X-Secret-Key"] = self._secret_key
        try:
            async with self._session.post(
                self.option.endpoint, json={"text": text or "", "trackId": self.call_id}, headers=headers
            ) as resp:
                if resp.status != 200:
                    raise ProviderError(f"eou service answered HTTP {resp.status}")
                body = await resp.json(content_type=None)
                completed = body.get("completed") if isinstance(body, dict) else None
                if not isinstance(completed, bool):
                    raise ProviderError("eou service answer has no boolean 'completed'")
                return completed
        except UrlRefused as exc:
            self.kind = "local"  # the same address would be refused at every turn
            message = exc.for_field("option.eou.endpoint", redact_url(self.option.endpoint))
            self._on_error(ProviderRefused(f"{message}; the local rule decides", 403))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._on_error(ProviderError(redact_url(f"eou service failed: {exc or type(exc).__name__}")))
        except ProviderError as exc:
            self._on_error(exc)
        return None

    async def close(self) -> None:
        self._cancel()
        if self._session is not None:
            await self._session.close()
