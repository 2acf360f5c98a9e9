"""The SDP work around a WebRTC answer that aiortc does not do (pure text functions, RFC 8866 lines).

- choose the audio codec: the best one the offer has, Opus > G.722 > PCMA > PCMU (RustPBX's order);
- negotiate RFC 4733 telephone-event, which aiortc leaves out of its answers, at the chosen codec's clock;
- drop IPv6 candidates unless the call asks for them, and add the public address for NAT deployments.
"""

from __future__ import annotations

import re

CODEC_ORDER = ("opus", "g722", "pcma", "pcmu")
# Numbers are bounded (payload type 0-127, rates and ICE priorities 32 bits): the offer is the client's
# text, and int() refuses digit runs past 4300 with a ValueError that would say nothing about the offer.
_RTPMAP = re.compile(r"^a=rtpmap:([0-9]{1,3}) ([^/\s]+)/([0-9]{1,10})(?![0-9])", re.IGNORECASE)
_CANDIDATE = re.compile(
    r"^a=candidate:(\S+) ([0-9]{1,3}) (\S+) ([0-9]{1,10}) (\S+) ([0-9]{1,5}) typ (\S+)(.*)$"
)


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def audio_rtpmaps(sdp: str) -> list[tuple[int, str, int]]:
    """(payload type, encoding name in lower case, clock rate) of the first audio m-line's formats."""
    out: list[tuple[int, str, int]] = []
    in_audio = False
    for line in _lines(sdp):
        if line.startswith("m="):
            if in_audio:
                break
            in_audio = line.startswith("m=audio")
        elif in_audio and (m := _RTPMAP.match(line)):
            if int(m.group(1)) <= 127:
                out.append((int(m.group(1)), m.group(2).lower(), int(m.group(3))))
    return out


def choose_codec(offer: str) -> tuple[str, int] | None:
    """(name, clock rate) of the best codec of the offer that this server speaks."""
    offered = {name: rate for _pt, name, rate in audio_rtpmaps(offer)}
    for name in CODEC_ORDER:
        if name in offered:
            return name, offered[name]
    return None


def telephone_event_pt(offer: str, clock_rate: int) -> int | None:
    """The offer's telephone-event payload type at `clock_rate` (else at any rate), if it has one."""
    events = [(pt, rate) for pt, name, rate in audio_rtpmaps(offer) if name == "telephone-event"]
    for pt, rate in events:
        if rate == clock_rate:
            return pt
    return events[0][0] if events else None


def add_telephone_event(answer: str, pt: int, clock_rate: int) -> str:
    """The answer with telephone-event (events 0-15) on its audio m-line."""
    lines = _lines(answer)
    out: list[str] = []
    in_audio = False
    added = False
    for line in lines:
        if line.startswith("m="):
            in_audio = line.startswith("m=audio") and not added
            if in_audio:
                line = f"{line} {pt}"
        out.append(line)
        if in_audio and not added and line.startswith("a=rtpmap:"):
            out += [f"a=rtpmap:{pt} telephone-event/{clock_rate}", f"a=fmtp:{pt} 0-15"]
            added = True
    return _join(out)


def strip_ipv6_candidates(sdp: str) -> str:
    return _join([line for line in _lines(sdp) if not (_CANDIDATE.match(line) and ":" in line.split()[4])])


def add_public_address(sdp: str, public_ip: str) -> str:
    """Each host candidate again with the public address (a 1:1 NAT keeps the port), and that address in
    the connection lines, so a peer outside the NAT has a candidate that reaches this server."""
    out: list[str] = []
    for line in _lines(sdp):
        m = _CANDIDATE.match(line)
        if line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {public_ip}"
        out.append(line)
        if m and m.group(7) == "host" and ":" not in m.group(5) and m.group(5) != public_ip:
            foundation, component, proto, priority, ip, port = m.groups()[:6]
            out.append(
                f"a=candidate:{foundation}n {component} {proto} {int(priority) - 1} {public_ip} {port} "
                f"typ srflx raddr {ip} rport {port}"
            )
    return _join(out)
