"""The envelope carried on Redis streams between processes.

One stream entry holds field `m`: a msgpack list of messages `{"c": call_id, "k": kind, "b": body}`, so one
XADD (and one XREAD) carries many calls' frames. Kinds: `cmd` (command dict), `evt` (event dict), `pcm`
(audio bytes), `ctl` (control dict with an `op`), `log` (an event recorded in the dump only).

A command a frontend forwards carries `SEQ` (a number per connection) in its body; the owner removes it
before it handles the command and answers `ctl {"op": "ack", "seq": n}` once it has, so the frontend
can time the round trip (`pbx_command_roundtrip_seconds`).
"""

from __future__ import annotations

from typing import Any

import msgpack

CMD, EVT, PCM, CTL, LOG = "cmd", "evt", "pcm", "ctl", "log"
FIELD = b"m"
SEQ = "_seq"


def pack(messages: list[dict[str, Any]]) -> bytes:
    packed: bytes = msgpack.packb(messages, use_bin_type=True)
    return packed


def unpack(blob: bytes) -> list[dict[str, Any]]:
    data = msgpack.unpackb(blob, raw=False)
    return data if isinstance(data, list) else []


def msg(call_id: str, kind: str, body: Any) -> dict[str, Any]:
    return {"c": call_id, "k": kind, "b": body}
