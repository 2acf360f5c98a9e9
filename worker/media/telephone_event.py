"""RFC 4733 telephone-events (DTMF carried in RTP, as `RTCDTMFSender.insertDTMF` and SIP phones send it).

Payload (RFC 4733 §2.3): event (8 bits), E (end), R, volume (6 bits), duration (16 bits). One key press is a
run of packets sharing one RTP timestamp, its last packets (E set) repeated up to three times; a new press
has a new timestamp. A press is reported once, at its first packet: waiting for the end would add the
key's whole duration to the latency.
"""

from __future__ import annotations

# RFC 4733 §3.2: events 0-9, * (10), # (11), A-D (12-15).
DIGITS = "0123456789*#ABCD"


def parse(payload: bytes) -> tuple[int, bool, int] | None:
    """(event, end, duration) of one payload, or None if it is not a telephone-event payload."""
    if len(payload) < 4:
        return None
    return payload[0], bool(payload[1] & 0x80), int.from_bytes(payload[2:4], "big")


def payload(event: int, end: bool, duration: int, volume: int = 10) -> bytes:
    """One telephone-event payload (the tests' callers send DTMF with it)."""
    return bytes([event, (0x80 if end else 0) | (volume & 0x3F)]) + (duration & 0xFFFF).to_bytes(2, "big")


class TelephoneEventDecoder:
    """Turns a stream's telephone-event packets into key presses, one per press."""

    def __init__(self) -> None:
        self._last_timestamp: int | None = None

    def feed(self, data: bytes, timestamp: int) -> str | None:
        """The digit of a new press, or None (a repeat of the press in progress, or not a DTMF event)."""
        parsed = parse(data)
        if parsed is None:
            return None
        event, _end, _duration = parsed
        if timestamp == self._last_timestamp:
            return None
        self._last_timestamp = timestamp
        return DIGITS[event] if event < len(DIGITS) else None
