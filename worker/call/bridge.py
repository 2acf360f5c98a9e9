"""A call's side of a bridge with another live call (active-call's `bridge` / `unbridge`): a media-only patch
in which each caller hears the other, whichever media processes (and hosts) own the two calls.

The call that runs `bridge {targetSessionId}` looks the other call up in the registry and tells its owner
(`ctl bridge {peer, owner}`); from then on each side sends its caller's audio (16 kHz s16le, as heard: muted
means silence) to the other side's owner as `brg` messages, and plays what it gets mixed over its own
server-side track, through a BridgePlayer (a few frames of slack; older frames are dropped, so the delay
stays bounded when the two clocks drift). Nothing else is coupled: no SIP signalling, either call may end,
a `tts` or `play` on one side is heard on that side only, over the other caller. `unbridge`, a new
`bridge`, or either call's end takes both sides down (`ctl unbridge`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from common import wire
from common.registry import Registry
from worker.media.player import BridgePlayer

log = logging.getLogger("pbx.worker.call.bridge")

Send = Callable[[str, dict[str, Any]], None]


class CallBridge:
    def __init__(self, call_id: str, proc_id: str, send: Send) -> None:
        self.call_id = call_id
        self.proc_id = proc_id
        self._send = send
        self.peer: str | None = None
        self._peer_owner = ""
        self._player: BridgePlayer | None = None

    @property
    def active(self) -> bool:
        return self.peer is not None

    async def connect(self, registry: Registry, target: str) -> str | None:
        """Bridge with call `target` (the `bridge` command); an error message when it cannot be."""
        if target == self.call_id:
            return "cannot bridge a call to itself"
        entry = await registry.get(target)
        if entry is None or not entry.owner:
            return f"bridge target session not found: {target}"
        if self.peer is not None and self.peer != target:
            self.disconnect()  # a new bridge replaces the old one
        self._join(target, entry.owner)
        self._send(entry.owner, wire.msg(target, wire.CTL, {"op": wire.Op.BRIDGE, "peer": self.call_id,
                                                            "owner": self.proc_id}))  # fmt: skip
        return None

    def joined(self, peer: str, owner: str) -> None:
        """The other call bridged with this one (`ctl bridge` from its owner)."""
        if not peer or not owner:
            return
        if self.peer is not None and self.peer != peer:
            self.disconnect()
        self._join(peer, owner)

    def _join(self, peer: str, owner: str) -> None:
        self.peer, self._peer_owner = peer, owner
        if self._player is None:
            self._player = BridgePlayer()
        log.info("bridged with %s (owned by %s)", peer, owner)

    def disconnect(self, target: str | None = None) -> None:
        """End the bridge (`unbridge`, with `target` its `targetSessionId` when given) on both sides."""
        if self.peer is None or (target is not None and target != self.peer):
            return
        peer, owner = self.peer, self._peer_owner
        self.left(peer)
        self._send(owner, wire.msg(peer, wire.CTL, {"op": wire.Op.UNBRIDGE, "peer": self.call_id}))

    def left(self, peer: str) -> None:
        """The other side ended the bridge (`ctl unbridge` from its owner)."""
        if self.peer != peer:
            return
        log.info("unbridged from %s", peer)
        self.peer, self._peer_owner, self._player = None, "", None

    def caller_audio(self, pcm: np.ndarray) -> None:
        """This call's caller, heard by the other call."""
        self._send(self._peer_owner, wire.msg(self.peer or "", wire.BRG, pcm.tobytes()))

    def feed(self, data: bytes) -> None:
        """The other call's caller, for this one to hear."""
        if self._player is not None and len(data) >= 2:
            self._player.feed(np.frombuffer(data, dtype=np.int16, count=len(data) // 2))

    def mix(self, frame: np.ndarray | None) -> np.ndarray | None:
        """This tick's frame for the caller: the server-side track's (None: nothing plays) with the other
        caller's over it."""
        if self._player is None:
            return frame
        heard = self._player.next_frame()
        if heard is None:
            return frame
        if frame is None:
            return heard
        mixed = frame.astype(np.int32) + heard
        return np.clip(mixed, -32768, 32767).astype(np.int16)
