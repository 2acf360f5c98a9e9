"""Every Redis key the server uses. Nothing else writes a raw key string.

Placement on a Redis Cluster: a process's keys (heartbeat, inbox, metrics, tombstone) carry its id as a hash
tag (`pbx:proc:{media-host-0-ab12cd}`), so they share a slot and the heartbeat's pipeline is one round trip
to one node; a call's hash and a SIP dialog's claim hash on their whole name (spread over the slots); the
dispatch stream and the call index are one key each (each on one node: docs/scaling.md measures them).
Scripts touch one key each. On a single server the braces are plain characters."""

from __future__ import annotations

from dataclasses import dataclass

DISPATCH_GROUP = "workers"
# Seconds an inbox (`inbox(proc)`) lives without a refresh: one whose reader is gone disappears.
INBOX_TTL = 60


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "pbx:"

    @property
    def dispatch(self) -> str:
        return f"{self.prefix}dispatch"

    @property
    def calls(self) -> str:
        return f"{self.prefix}calls"

    def inbox(self, proc: str) -> str:
        return f"{self.prefix}inbox:{{{proc}}}"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    def proc(self, proc: str) -> str:
        return f"{self.prefix}proc:{{{proc}}}"

    def dead(self, proc: str) -> str:
        """A tombstone: the process is known to have exited (set by whoever saw it exit)."""
        return f"{self.prefix}dead:{{{proc}}}"

    def proc_pattern(self, ids: str = "*") -> str:
        """A SCAN pattern for heartbeats; `ids` a glob of process ids."""
        return f"{self.prefix}proc:{{{ids}}}"

    def inbox_pattern(self, ids: str = "*") -> str:
        return f"{self.prefix}inbox:{{{ids}}}"

    def proc_of(self, key: bytes | str) -> str:
        """The process id in one of its keys (heartbeat, inbox, metrics, tombstone)."""
        name = key.decode() if isinstance(key, bytes) else key
        return name[name.rindex("{") + 1 : name.rindex("}")]

    def metrics(self, proc: str) -> str:
        return f"{self.prefix}metrics:{{{proc}}}"

    def metrics_pattern(self) -> str:
        return f"{self.prefix}metrics:{{*}}"

    def sip(self, sip_call_id: str) -> str:
        return f"{self.prefix}sip:{sip_call_id}"

    def call_rate(self, address: str) -> str:
        """The bucket of new calls from one client address (an IPv4 address or an IPv6 /64)."""
        return f"{self.prefix}rate:calls:{address}"
