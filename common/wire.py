"""The envelope carried on Redis streams (and peer links) between processes.

One stream entry holds field `m`: a msgpack list of messages `{"c": call_id, "k": kind, "b": body}`, so one
XADD (and one XREAD) carries many calls' frames. Kinds: `cmd` (a command, below), `evt` (event dict), `pcm`
(audio bytes), `ctl` (control dict with an `op`, one of `Op`), `log` (an event recorded in the dump only),
`sip` (a SIP message forwarded to the media process that owns its dialog, worker/sip/telephony.py), `obs`
(owner -> a frontend serving `/events/{id}`: `{"w": watch id, "t": "event" | "command" | "end", "d": the
event or command}`), `brg` (a bridged call's caller audio, 16 kHz s16le, from its owner to the other call's:
worker/call/bridge.py).

A command crosses typed: the frontend validated it (common/protocol.py) and sends `{"command": name,
"args": <the command's dataclass>}`; msgspec packs the dataclass by its fields, and the owner turns `args`
back into that dataclass by its type (`protocol.decode_command`) without validating it again. A command
a frontend forwards also carries `SEQ` (a number per connection) in that body; the owner answers
`ctl {"op": "ack", "seq": n}` once it has handled the command, so the frontend can time the round trip
(`pbx_command_roundtrip_seconds`).

msgspec rather than msgpack-python: it packs dataclasses without a dict copy and is 1.5 to 17 times faster
on every message kind, audio included (bench/wire.py, docs/performance.md "The wire between processes").
"""

from __future__ import annotations

from typing import Any

import msgspec

CMD, EVT, PCM, CTL, LOG, SIP, OBS, BRG = "cmd", "evt", "pcm", "ctl", "log", "sip", "obs", "brg"
FIELD = b"m"
SEQ = "_seq"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def pack(messages: list[dict[str, Any]]) -> bytes:
    """Raises TypeError, ValueError (a lone surrogate) or OverflowError (an integer beyond 64 bits)."""
    return _encoder.encode(messages)


def unpack(blob: bytes) -> list[dict[str, Any]]:
    """Raises ValueError (msgspec.DecodeError) on a corrupt blob."""
    data = _decoder.decode(blob)
    return data if isinstance(data, list) else []


def msg(call_id: str, kind: str, body: Any) -> dict[str, Any]:
    return {"c": call_id, "k": kind, "b": body}


class Op:
    """The `op` of a `ctl` message: who sends it, and the body's other fields."""

    # Owner -> frontend: the media process took the call (`owner`); the frontend sends it what it held.
    CLAIMED = "claimed"
    # Owner -> frontend: the command numbered `seq` is handled (the round trip is timed).
    ACK = "ack"
    # Owner (or the reaper, for a dead owner) -> frontend: the call is over; close the socket once its
    # queued events are out.
    CLOSE = "close"
    # Frontend -> the media process holding an inbound SIP call: this frontend (`frontend`) has its client
    # socket now (`dump`: whether to record the call's dump; `serverSideTrack`: the trackId of what the server
    # plays); the process answers `claimed`.
    ATTACH = "attach"
    # `/call/kill` -> the owner, or the frontend holding the socket, which passes it on: hang up now.
    KILL = "kill"
    # Frontend -> owner: the client socket closed; `written`: how many of the owner's events the frontend
    # wrote to it (the owner of a resumable call holds the rest for the next socket).
    GONE = "gone"
    # Frontend -> owner: the frontend is stopping and its drain time is over.
    SHUTDOWN = "shutdown"
    # A frontend serving `/events/{id}` -> owner: send this call's events and commands to `frontend` as `obs`
    # messages tagged `w` from now on (`unwatch`: stop). An owner without the call answers `obs` end.
    WATCH = "watch"
    UNWATCH = "unwatch"
    # Any frontend -> the frontend holding a call's socket, while no media process owns the call yet: pass
    # `m` (a message for the owner) on, in order with the socket's own.
    RELAY = "relay"
    # A frontend's `POST /precache` -> a media process: synthesize `cmd` (a `tts` command body) into the
    # cache and answer `precached` to `frontend` with the request's `req` and the result's fields.
    PRECACHE = "precache"
    PRECACHED = "precached"
    # The owner of a call that runs `bridge` -> the other call's owner: bridge with `peer` (owned by
    # `owner`), or end that bridge (`unbridge`, `peer`).
    BRIDGE = "bridge"
    UNBRIDGE = "unbridge"
    # A frontend whose new socket names a live call with `option.resume` -> its owner: this frontend
    # (`frontend`) has the call's socket now. The owner answers `claimed`, then the events held meanwhile.
    RESUME = "resume"
    # Owner -> the frontend whose socket a new one replaces: close it and answer `gone` with `written`.
    REPLACED = "replaced"
