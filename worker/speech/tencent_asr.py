"""Tencent Cloud real-time speech recognition over WebSocket (provider `tencent`).

Protocol (Tencent Cloud ASR API, "real-time speech recognition, WebSocket"): connect to
`wss://asr.cloud.tencent.com/asr/v2/<appid>?<query>&signature=<sig>`, where the signature is
base64(HMAC-SHA1(secretKey, host + path + "?" + the query sorted by key, values as they are)), then
URL-encoded. Audio goes out as binary 16 kHz s16le (`voice_format=1`), 40 ms a message as Tencent
recommends; `{"type":"end"}` closes the stream. Every answer is JSON with `code` (0 = fine), `message`,
`final` (1 after the end) and, for results, `result{slice_type, index, start_time, end_time,
voice_text_str}`: slice types 0 and 1 are interim, 2 the sentence's final text. Offsets are ms since the
first audio of the connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
import uuid
from typing import Any
from urllib.parse import quote

from common.errors import ProviderRefused
from worker.speech.asr import Transcript
from worker.speech.endpoints import TENCENT_ASR_HOST, custom_endpoint_refusal, is_default_host, split_endpoint
from worker.speech.ws_asr import StreamingAsr

DEFAULT_HOST = TENCENT_ASR_HOST
DEFAULT_MODEL = "16k_zh_en"
# RustPBX's defaults; each may be overridden through `asr.extra`.
DEFAULT_PARAMS = {
    "needvad": "1",
    "vad_silence_time": "700",
    "filter_modal": "0",
    "filter_punc": "0",
    "convert_num_mode": "1",
    "word_info": "0",
    "max_speak_time": "60000",
}


def sign(secret_key: str, host_and_path: str, params: dict[str, str]) -> str:
    """The `signature` query value: base64 HMAC-SHA1 of the sorted, unencoded query, URL-encoded."""
    plain = f"{host_and_path}?{'&'.join(f'{k}={params[k]}' for k in sorted(params))}"
    digest = hmac.new(secret_key.encode(), plain.encode(), hashlib.sha1).digest()
    return quote(base64.b64encode(digest).decode(), safe="")


def _extra_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    raise ProviderRefused(f"option.asr.extra.{key}: expected a string or a number", 400)


class TencentAsr(StreamingAsr):
    provider = "tencent"
    chunk_bytes = 1280

    def _server_credentials(self) -> bool:
        """Whether the environment's credentials may fill in the option's: only towards Tencent itself."""
        return self.context.trust_clients or is_default_host(self.option.endpoint, DEFAULT_HOST)

    def _credentials(self) -> tuple[str, str, str]:
        o, c = self.option, self.context
        if not self._server_credentials():
            return o.app_id or "", o.secret_id or "", o.secret_key or ""
        return (
            o.app_id or c.tencent_appid,
            o.secret_id or c.tencent_secret_id,
            o.secret_key or c.tencent_secret_key,
        )

    def secrets(self) -> tuple[str, ...]:
        return self._credentials()[1:]

    def endpoint(self) -> str:
        return self.option.endpoint or f"wss://{DEFAULT_HOST}"

    def check(self) -> None:
        missing = [
            n for n, v in zip(("appId", "secretId", "secretKey"), self._credentials(), strict=True) if not v
        ]
        if missing and not self._server_credentials():
            raise custom_endpoint_refusal("option.asr.endpoint", missing, DEFAULT_HOST)
        if missing:
            raise ProviderRefused(
                f"tencent asr: missing {', '.join(missing)} (set them in option.asr or TENCENT_APPID, "
                "TENCENT_SECRET_ID, TENCENT_SECRET_KEY)",
                400,
            )
        split_endpoint(self.option.endpoint, DEFAULT_HOST, "option.asr.endpoint")
        self.query()

    def query(self) -> dict[str, str]:
        """The query of a new connection, without the signature."""
        _appid, secret_id, _key = self._credentials()
        now = int(time.time())
        voice_id = self.context.call_id if len(self.context.call_id) <= 128 else str(uuid.uuid4())
        params = {
            "secretid": secret_id,
            "timestamp": str(now),
            "expired": str(now + 86400),
            "nonce": str(random.randint(1, 9_999_999_999)),
            "engine_model_type": self.option.model_type or self.option.model or DEFAULT_MODEL,
            "voice_id": voice_id,
            "voice_format": "1",
            **DEFAULT_PARAMS,
        }
        for key, value in (self.option.extra or {}).items():
            params[str(key)] = _extra_value(str(key), value)
        return params

    def url(self) -> str:
        appid, _sid, secret_key = self._credentials()
        scheme, host, prefix = split_endpoint(self.option.endpoint, DEFAULT_HOST, "option.asr.endpoint")
        path = f"{prefix}/asr/v2/{appid}"
        params = self.query()
        signature = sign(secret_key, host + path, params)
        query = "&".join(f"{k}={quote(params[k], safe='')}" for k in sorted(params))
        return f"{scheme}://{host}{path}?{query}&signature={signature}"

    def parse(self, message: dict[str, Any]) -> Transcript | None:
        code = message.get("code", 0)
        if code != 0:
            text = message.get("message") or "error"
            status = code if isinstance(code, int) and code > 0 else 502
            raise ProviderRefused(f"tencent asr: the service answered {code}: {text}", status)
        result = message.get("result")
        if not isinstance(result, dict):
            return None
        text = str(result.get("voice_text_str") or "")
        final = result.get("slice_type") == 2
        if not text and not final:
            return None
        base = self.stream_start_ms
        start, end = result.get("start_time"), result.get("end_time")
        return Transcript(
            text=text,
            index=int(result.get("index") or 0),
            final=final,
            start_ms=base + int(start) if base is not None and isinstance(start, int | float) else None,
            end_ms=base + int(end) if base is not None and isinstance(end, int | float) else None,
        )

    def finished(self, message: dict[str, Any]) -> bool:
        return message.get("final") == 1

    async def end_of_audio(self, ws: Any) -> None:
        await ws.send_str('{"type": "end"}')
