"""A VoiceAPI ASR service for tests (the protocol of github.com/ruzhila/voiceapi's `/asr` WebSocket).

Binary s16le audio at the `samplerate` of the query in, `{"text", "finished", "idx"}` out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.providers.segmenter import Segmenter, sentence_text
from tests.providers.server import MockServer


@dataclass
class Connection:
    query: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)


class VoiceApiAsrServer(MockServer):
    def __init__(self, script: list[str] | None = None) -> None:
        super().__init__()
        self.script = script or []
        self.connections: list[Connection] = []
        self.drop_after: int | None = None  # bytes, on the first connection only

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/asr", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("samplerate") != "16000":
            return web.Response(status=400, text="samplerate must be 16000")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        conn = Connection(dict(request.query))
        self.connections.append(conn)
        first = len(self.connections) == 1
        segmenter = Segmenter()
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            conn.audio += msg.data
            if first and self.drop_after is not None and len(conn.audio) >= self.drop_after:
                await ws.close()
                break
            for r in segmenter.feed(msg.data):
                text = sentence_text(self.script, r.index, r.final)
                await ws.send_str(json.dumps({"text": text, "finished": r.final, "idx": r.index}))
        return ws
