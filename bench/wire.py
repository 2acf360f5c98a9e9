"""The wire between processes, per message: today's path against the msgspec one (issue 19).

Four messages, each encoded (frontend side: the command's wire form, the envelope, the batch packed) and
decoded (owner side: the batch unpacked, the command back to its type):

- an audio envelope of 640 bytes (a 20 ms frame of 16 kHz PCM, the hot path: 50 a second per call);
- a `tts` command; an `invite` with a full option; an event.

"today" is the path before issue 19: the command turned into its camelCase dict (`to_wire`), packed with
msgpack, unpacked and parsed and validated again (`command_from_dict`). "msgspec" packs the validated
dataclass as it is and decodes it by its type (`msgspec.convert`), with no second validation.

Run: .venv/bin/python -m bench.wire [--rounds N]. Prints ns per message for each path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack
import msgspec

from common import events
from common.protocol import COMMANDS, NAMES, Command, command_from_dict, command_to_dict, parse_command

CALL = "c0ffee00-1234-5678-9abc-def012345678"
FRAME = bytes(640)
TTS = {"command": "tts", "text": "Hello there, how can I help you?", "playId": "p1", "autoHangup": False}
INVITE = {
    "command": "invite",
    "option": {
        "denoise": True,
        "codec": "pcmu",
        "callee": "sip:bob@example.com",
        "caller": "sip:alice@example.com",
        "recorder": {"recorderFile": "call.wav", "samplerate": 16000, "ptime": 200},
        "vad": {"type": "silero", "voiceThreshold": 0.5, "silenceTimeout": 800, "speechPadding": 250},
        "asr": {"provider": "tencent", "language": "en", "appId": "1", "secretId": "a", "secretKey": "b"},
        "tts": {"provider": "tencent", "speaker": "301030", "speed": 1.0, "appId": "1", "secretKey": "b"},
        "handshakeTimeout": "30s",
        "ringTimeout": 45,
        "sip": {"username": "alice", "password": "pw", "headers": {"X-Tag": "1"}},
        "extra": {"customer": "42", "tags": ["a", "b"]},
        "eou": {"type": "tencent", "timeout": 3000},
        "mediaPass": {"url": "wss://bot.example.com/ws", "inputSampleRate": 16000, "packetSize": 640},
    },
}
EVENT = events.event("asrFinal", track_id=CALL, index=3, start_time=1, end_time=2, text="yes please")


def _msg(kind: str, body: Any) -> dict[str, Any]:
    return {"c": CALL, "k": kind, "b": body}


# --- today -------------------------------------------------------------------------------------------------


def _pack_today(messages: list[dict[str, Any]]) -> bytes:
    packed: bytes = msgpack.packb(messages, use_bin_type=True)
    return packed


def _unpack_today(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False)


def _cmd_encode_today(cmd: Command) -> bytes:
    body = command_to_dict(cmd)
    body["_seq"] = 7
    return _pack_today([_msg("cmd", body)])


def _cmd_decode_today(blob: bytes) -> Command:
    (m,) = _unpack_today(blob)
    body = m["b"]
    body.pop("_seq", None)
    return command_from_dict(body)


# --- msgspec -----------------------------------------------------------------------------------------------

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder()


def _cmd_encode_msgspec(cmd: Command) -> bytes:
    return _ENC.encode([_msg("cmd", {"command": NAMES[type(cmd)], "_seq": 7, "args": cmd})])


def _cmd_decode_msgspec(blob: bytes) -> Command:
    (m,) = _DEC.decode(blob)
    body = m["b"]
    result: Command = msgspec.convert(body["args"], COMMANDS[body["command"]])
    return result


def _time(fn: Callable[[], Any], rounds: int) -> float:
    """ns per call, best of three runs of `rounds` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / rounds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    args = ap.parse_args()
    n = args.rounds

    tts, invite = parse_command(json.dumps(TTS)), parse_command(json.dumps(INVITE))
    for cmd in (tts, invite):  # both paths give the command back as it was
        assert _cmd_decode_today(_cmd_encode_today(cmd)) == cmd
        assert _cmd_decode_msgspec(_cmd_encode_msgspec(cmd)) == cmd

    audio = [_msg("pcm", FRAME)]
    event = [_msg("evt", EVENT)]
    rows: list[tuple[str, str, Callable[[], Any], Callable[[], Any]]] = []
    for name, enc_today, enc_new in (
        ("audio 640 B", lambda: _pack_today(audio), lambda: _ENC.encode(audio)),
        ("tts", lambda: _cmd_encode_today(tts), lambda: _cmd_encode_msgspec(tts)),
        ("invite (full option)", lambda: _cmd_encode_today(invite), lambda: _cmd_encode_msgspec(invite)),
        ("event", lambda: _pack_today(event), lambda: _ENC.encode(event)),
    ):
        rows.append((name, "encode", enc_today, enc_new))
    blobs = {
        "audio 640 B": (_pack_today(audio), _ENC.encode(audio)),
        "tts": (_cmd_encode_today(tts), _cmd_encode_msgspec(tts)),
        "invite (full option)": (_cmd_encode_today(invite), _cmd_encode_msgspec(invite)),
        "event": (_pack_today(event), _ENC.encode(event)),
    }
    for name, (old, new) in blobs.items():
        if name in ("tts", "invite (full option)"):
            rows.append((name, "decode", partial(_cmd_decode_today, old), partial(_cmd_decode_msgspec, new)))
        else:
            rows.append((name, "decode", partial(_unpack_today, old), partial(_DEC.decode, new)))

    print(f"{'message':<22} {'step':<7} {'today ns':>9} {'msgspec ns':>11} {'ratio':>6}  bytes today/msgspec")
    for name, step, old_fn, new_fn in rows:
        t_old, t_new = _time(old_fn, n), _time(new_fn, n)
        sizes = f"{len(blobs[name][0])}/{len(blobs[name][1])}"
        print(f"{name:<22} {step:<7} {t_old:>9.0f} {t_new:>11.0f} {t_new / t_old:>6.2f}  {sizes}")


if __name__ == "__main__":
    main()
