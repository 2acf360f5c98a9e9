"""active-call's `option.subscribe`: a SIP or WebRTC call's audio mirrored to the app's socket.

Each 20 ms frame of each track goes to the app as one binary message: a byte naming the track, then the
frame as 16 kHz s16le mono PCM (641 bytes in all). Track 0 is the server-side track (what the peer hears:
`play`, `tts`, a bot, a bridged transfer's leg), sent only while something plays on it; track 1 is the
peer's (what its RTP or peer connection brings). These are the numbers active-call's code gives
(`update_track_wrapper` in src/call/active_call.rs hands 0 to the server-side track's
`SubscribeProcessor`, 1 to the caller's); its documentation says 0 = caller, 1 = callee, which the code
does not do.

The session calls `server_side` and `peer` only when the option is on: off, the hot path is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SERVER_SIDE, PEER = 0, 1
FRAME = 320  # samples: 20 ms at 16 kHz
_SERVER_SIDE, _PEER = bytes((SERVER_SIDE,)), bytes((PEER,))


class AudioMirror:
    """Sends both tracks' frames to the app as `send(message)`; a peer's packets of another length than
    20 ms (a ptime of 30, say) are cut into 20 ms frames first."""

    __slots__ = ("_rest", "_send")

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._rest: np.ndarray | None = None  # a partial frame of the peer's audio

    def server_side(self, frame: np.ndarray) -> None:
        """One 20 ms frame of the server-side track (the media clock makes them 320 samples)."""
        self._send(_SERVER_SIDE + frame.astype("<i2", copy=False).tobytes())

    def peer(self, pcm: np.ndarray) -> None:
        """Decoded audio from the peer, 16 kHz int16, as it arrives."""
        if self._rest is None and len(pcm) == FRAME:
            self._send(_PEER + pcm.astype("<i2", copy=False).tobytes())
            return
        samples = pcm if self._rest is None else np.concatenate((self._rest, pcm))
        whole = len(samples) - len(samples) % FRAME
        for i in range(0, whole, FRAME):
            self._send(_PEER + samples[i : i + FRAME].astype("<i2", copy=False).tobytes())
        self._rest = samples[whole:].copy() if whole < len(samples) else None
