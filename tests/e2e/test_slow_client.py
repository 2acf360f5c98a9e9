"""A client that stops reading: its audio is dropped (bounded memory), its events are not."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.audio_util import tone
from tests.e2e.conftest import StackInfo
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e


class RawWebSocket:
    """A minimal blocking WebSocket client with a tiny receive buffer, so the server sees back-pressure."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0x81]) + (
            bytes([0x80 | len(payload)])
            if len(payload) < 126
            else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        )
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def frame(self) -> tuple[int, bytes]:
        self._need(2)
        opcode, length = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        pos = 2
        if length == 126:
            self._need(4)
            length, pos = struct.unpack(">H", self.buf[2:4])[0], 4
        elif length == 127:
            self._need(10)
            length, pos = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(pos + length)
        payload, self.buf = self.buf[pos : pos + length], self.buf[pos + length :]
        return opcode, payload


def test_slow_reader_loses_audio_not_events(stack: StackInfo, call_id: str, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "t.wav", tone(440, 10.0))
    port = int(stack.base.rsplit(":", 1)[1])
    ws = RawWebSocket(port, f"/call?id={call_id}&ping=0")
    try:
        ws.send_text(json.dumps({"command": "invite", "option": {}}))
        ws.send_text(json.dumps({"command": "play", "url": str(wav), "playId": "slow"}))
        time.sleep(10.5)  # not reading while the whole file plays out
        ws.sock.settimeout(5)
        events, audio = [], 0
        while not any(e.get("event") == "trackEnd" and e.get("playId") == "slow" for e in events):
            opcode, payload = ws.frame()
            if opcode == 1:
                events.append(json.loads(payload))
            elif opcode == 2:
                audio += 1
        names = [e["event"] for e in events]
        assert names[:3] == ["trackStart", "answer", "trackStart"] and names[-1] == "trackEnd"
        assert audio < 400, f"{audio} of 500 frames: the stalled client's audio was bounded"
    finally:
        ws.sock.close()
