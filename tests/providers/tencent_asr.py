"""A Tencent Cloud real-time ASR service for tests, speaking the documented WebSocket protocol.

It checks what the real service checks (the HMAC-SHA1 signature over host, path and the sorted query;
the secret id; expiry; the required parameters) and answers as the real one does: a handshake message,
then result messages whose `slice_type` is 0/1 while a sentence goes on and 2 when it ends, and after the
client's `{"type":"end"}` a message with `final: 1`. Errors come as `code != 0` messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.providers.segmenter import Result, Segmenter, sentence_text
from tests.providers.server import MockServer

REQUIRED = ("secretid", "timestamp", "expired", "nonce", "engine_model_type", "voice_id", "voice_format")


@dataclass
class Connection:
    appid: str
    query: dict[str, str]
    host: str
    audio: bytearray = field(default_factory=bytearray)
    got_end: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)


class TencentAsrServer(MockServer):
    def __init__(self, appid: str, secret_id: str, secret_key: str, script: list[str] | None = None) -> None:
        super().__init__()
        self.appid = appid
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.script = script or []
        self.connections: list[Connection] = []
        # Test switches: an error code to answer after this many bytes, or a connection drop after them.
        self.error_after: tuple[int, int] | None = None  # (bytes, code)
        self.drop_after: int | None = None  # bytes, on the first connection only

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/asr/v2/{appid}", self.handle)

    def _refusal(self, request: web.Request) -> tuple[int, str] | None:
        q = request.query
        missing = [k for k in REQUIRED if not q.get(k)]
        if missing:
            return 4001, f"missing parameters {missing}"
        if request.match_info["appid"] != self.appid:
            return 4002, "unknown appid"
        if q["secretid"] != self.secret_id:
            return 4002, "unknown secretid"
        if int(q["expired"]) <= time.time() or abs(int(q["timestamp"]) - time.time()) > 60:
            return 4002, "request expired"
        params = {k: v for k, v in q.items() if k != "signature"}
        plain = f"{request.host}{request.path}?{'&'.join(f'{k}={params[k]}' for k in sorted(params))}"
        digest = hmac.new(self.secret_key.encode(), plain.encode(), hashlib.sha1).digest()
        if q.get("signature") != base64.b64encode(digest).decode():
            return 4002, "signature mismatch"
        if q["voice_format"] != "1":
            return 4001, "this test server takes PCM only"
        return None

    def _message(self, voice_id: str, result: dict[str, Any] | None = None, final: int = 0) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "code": 0,
            "message": "success",
            "voice_id": voice_id,
            "message_id": f"{voice_id}_{uuid.uuid4().hex[:8]}",
            "final": final,
        }
        if result is not None:
            msg["result"] = result
        return msg

    def _result(self, r: Result) -> dict[str, Any]:
        return {
            "slice_type": 2 if r.final else 1,
            "index": r.index,
            "start_time": r.start_ms,
            "end_time": r.end_ms,
            "voice_text_str": sentence_text(self.script, r.index, r.final),
            "word_size": 0,
            "word_list": [],
        }

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        conn = Connection(request.match_info["appid"], dict(request.query), request.host)
        self.connections.append(conn)
        voice_id = request.query.get("voice_id", "")

        async def send(msg: dict[str, Any]) -> None:
            conn.messages.append(msg)
            await ws.send_str(json.dumps(msg, ensure_ascii=False))

        refusal = self._refusal(request)
        if refusal is not None:
            code, text = refusal
            await send({"code": code, "message": text, "voice_id": voice_id, "message_id": "", "final": 0})
            await ws.close()
            return ws
        await send(self._message(voice_id))
        segmenter = Segmenter()
        first = len(self.connections) == 1
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                conn.audio += msg.data
                if first and self.drop_after is not None and len(conn.audio) >= self.drop_after:
                    await ws.close()
                    break
                if self.error_after is not None and len(conn.audio) >= self.error_after[0]:
                    await send(
                        {
                            "code": self.error_after[1],
                            "message": "test error",
                            "voice_id": voice_id,
                            "message_id": "",
                            "final": 0,
                        }
                    )
                    await ws.close()
                    break
                for r in segmenter.feed(msg.data):
                    await send(self._message(voice_id, self._result(r)))
            elif msg.type == WSMsgType.TEXT:
                if json.loads(msg.data).get("type") == "end":
                    conn.got_end = True
                    for r in segmenter.flush():
                        await send(self._message(voice_id, self._result(r)))
                    await send(self._message(voice_id, final=1))
                    await ws.close()
                    break
        return ws
