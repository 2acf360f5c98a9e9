"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for the audio of a SIP call: pure text functions.

`parse` reads any session description a PBX or phone sends, keeping every line (unknown ones too) in
order so that `str()` gives it back; the structured fields are read from those lines. `offer` writes our
offer, `answer` answers a remote offer (RFC 3264 §6) and says what was agreed in a `Negotiated`;
`negotiated_from_answer` does the same on the offerer side (§7). `is_hold` and `bump` serve re-INVITEs
(§8).

One audio stream per call: the first audio m-line with a codec in common is taken, every other m-line is
rejected with port 0. Plain RTP only (RTP/AVP, and RTP/AVPF, whose peers RFC 4585 keeps interoperable with
plain AVP); SRTP profiles are rejected since the RTP layer has no keys.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")

# (may send, may receive) from the point of view of the SDP's author (RFC 3264 §5.1).
_FLAGS: dict[Direction, tuple[bool, bool]] = {
    "sendrecv": (True, True),
    "sendonly": (True, False),
    "recvonly": (False, True),
    "inactive": (False, False),
}
_BY_FLAGS = {flags: name for name, flags in _FLAGS.items()}

TELEPHONE_EVENT_PT = 101
TELEPHONE_EVENTS = "0-16"  # RFC 4733 §3.2: DTMF 0-9 * # A-D, and flash (16)
DEFAULT_PTIME = 20
_PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
_LEGACY_HOLD = "0.0.0.0"  # RFC 3264 §8.4: RFC 2543's way of saying "send nothing to me"

_LINE = re.compile(r"([a-z])=(.*)")
_SPLIT = re.compile(r"\r\n|\r|\n")
# Numbers are bounded: a malformed line gets this module's error, not int()'s refusal of 4300+ digits.
_RTPMAP = re.compile(r"(\d{1,3})\s+([^/\s]+)/(\d{1,10})(?:/(\d{1,3}))?\s*")
_FMTP = re.compile(r"(\d{1,3})\s+(.*)")
_RTCP = re.compile(r"(\d{1,5})(?:\s+IN\s+IP[46]\s+(\S+))?\s*", re.IGNORECASE)
_PTIME = re.compile(r"(\d{1,6})(?:\.\d*)?")
_PORT = re.compile(r"(\d{1,5})(?:/(\d{1,5}))?")
_ORIGIN_VERSION = re.compile(r"^(o=\S+[ \t]+\S+[ \t]+)(\d+)", re.MULTILINE)


class NoCommonMedia(ValueError):
    """The offer (or answer) leaves no audio stream this side can take: answer the INVITE with 488 Not
    Acceptable Here (RFC 3261 §13.3.1.3), or end the call when it is the remote's answer."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One payload format (RFC 4566 §6 a=rtpmap, or RFC 3551 §6 for a static type without one)."""

    pt: int
    encoding: str
    clock_rate: int
    channels: int = 1

    @property
    def name(self) -> str:
        """The encoding name upper-cased: names are case-insensitive (RFC 4855 §3)."""
        return self.encoding.upper()


# RFC 3551 §6, table 4: the static audio payload types.
STATIC: dict[int, RtpMap] = {
    pt: RtpMap(pt, name, rate, channels)
    for pt, name, rate, channels in (
        (0, "PCMU", 8000, 1),
        (3, "GSM", 8000, 1),
        (4, "G723", 8000, 1),
        (5, "DVI4", 8000, 1),
        (6, "DVI4", 16000, 1),
        (7, "LPC", 8000, 1),
        (8, "PCMA", 8000, 1),
        (9, "G722", 8000, 1),  # RFC 3551 §4.5.2: the RTP clock stays 8000 though G.722 samples at 16 kHz
        (10, "L16", 44100, 2),
        (11, "L16", 44100, 1),
        (12, "QCELP", 8000, 1),
        (13, "CN", 8000, 1),
        (14, "MPA", 90000, 1),
        (15, "G728", 8000, 1),
        (16, "DVI4", 11025, 1),
        (17, "DVI4", 22050, 1),
        (18, "G729", 8000, 1),
    )
}
# The codecs `offer` can write (their static type and RTP clock), in our order of preference: the SIP
# side's codec list, which worker/media/codecs.py must be able to make (`make_codec`, lower-cased).
_OURS = {"PCMU": STATIC[0], "PCMA": STATIC[8], "G722": STATIC[9]}
SUPPORTED = tuple(_OURS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """The o= line (RFC 4566 §5.2). `session_id` stays text: it is only compared, and may exceed 64 bits."""

    username: str
    session_id: str
    version: int
    net_type: str
    addr_type: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    """One m= section. `connection` and `direction` are effective values: the media-level c= or
    direction attribute if there is one, else the session's (RFC 4566 §5.7, RFC 3264 §5.1), else None /
    sendrecv. `lines` are the section's lines as received, from its m= line on."""

    kind: str
    port: int
    port_count: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None
    direction: Direction
    rtpmaps: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    maxptime: int | None = None
    rtcp_port: int | None = None
    rtcp_address: str | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()
    lines: tuple[str, ...] = ()

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats that are RTP payload type numbers, in the offered order."""
        # isascii: str.isdigit() takes superscripts and other digits that int() refuses; and at most three
        # digits, past which int() may refuse the length (and no payload type is that large anyway).
        return tuple(
            int(f) for f in self.formats if len(f) <= 3 and f.isascii() and f.isdigit() and int(f) <= 127
        )

    def codec(self, pt: int) -> RtpMap | None:
        """What payload type `pt` carries here: its rtpmap, else the RFC 3551 static assignment."""
        return self.rtpmaps.get(pt) or STATIC.get(pt)

    @property
    def codecs(self) -> tuple[RtpMap, ...]:
        """The known formats in preference order (RFC 3264 §5.1: the first is the most preferred)."""
        return tuple(c for pt in self.payload_types if (c := self.codec(pt)) is not None)

    @property
    def telephone_events(self) -> tuple[RtpMap, ...]:
        """The RFC 4733 telephone-event formats offered, in order."""
        return tuple(c for c in self.codecs if c.name == "TELEPHONE-EVENT")

    def attribute(self, name: str) -> str | None:
        """The value of the first a=`name` (empty text for a flag attribute), or None if absent."""
        for key, value in self.attributes:
            if key == name:
                return value or ""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription:
    """A parsed SDP. `connection` and `direction` are the session-level values as written (None when
    absent); each `Media` carries the effective ones. `lines` are the session-level lines as received."""

    origin: Origin
    session_name: str
    connection: str | None
    direction: Direction | None
    attributes: tuple[tuple[str, str | None], ...]
    media: tuple[Media, ...]
    lines: tuple[str, ...]

    def __str__(self) -> str:
        lines = list(self.lines)
        for m in self.media:
            lines += m.lines
        return "\r\n".join(lines) + "\r\n"

    @property
    def audio(self) -> Media | None:
        """The first audio section that is not rejected (port 0), if any."""
        return next((m for m in self.media if m.kind == "audio" and m.port != 0), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Negotiated:
    """What an offer/answer exchange agreed for the call's audio, from this side's point of view.

    `payload_type` and `telephone_event_pt` are the numbers to send with (the remote's numbering, RFC 3264
    §5.1); `direction` is what this side does (`sendonly`: we send, they do not); `ptime` the packet time
    the remote asked to receive, 20 ms if it did not say."""

    codec: str
    payload_type: int
    clock_rate: int
    telephone_event_pt: int | None
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    direction: Direction
    ptime: int


def _connection(value: str, where: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0].upper() != "IN" or parts[1].upper() not in ("IP4", "IP6"):
        raise ValueError(f"SDP {where}: c= must be 'IN IP4|IP6 <address>', got {value[:60]!r}")
    return parts[2].split("/", 1)[0]  # drop a multicast /ttl/count suffix (RFC 4566 §5.7)


def _attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name.strip(), (rest.strip() if sep else None)


def _media(
    lines: list[str], session_connection: str | None, session_direction: Direction | None, index: int
) -> Media:
    where = f"m-line {index + 1}"
    parts = lines[0][2:].split()
    if len(parts) < 3:
        raise ValueError(f"SDP {where}: expected 'm=<media> <port> <proto> <formats>', got {lines[0][:60]!r}")
    kind, port_text, proto, *formats = parts
    port_match = _PORT.fullmatch(port_text)
    if port_match is None or int(port_match.group(1)) > 65535:
        raise ValueError(f"SDP {where}: bad port {port_text!r}")
    port = int(port_match.group(1))
    if not formats and port != 0:
        raise ValueError(f"SDP {where}: no formats on an active m-line")
    connection = session_connection
    direction = session_direction
    rtpmaps: dict[int, RtpMap] = {}
    fmtp: dict[int, str] = {}
    ptime = maxptime = rtcp_port = None
    rtcp_address = None
    attributes: list[tuple[str, str | None]] = []
    for line in lines[1:]:
        if line.startswith("c="):
            connection = _connection(line[2:], where)
        elif line.startswith("a="):
            name, value = _attribute(line[2:])
            attributes.append((name, value))
            if name in DIRECTIONS and value is None:
                direction = cast(Direction, name)
            elif name == "rtpmap" and value is not None:
                m = _RTPMAP.fullmatch(value)
                if m is None or int(m.group(1)) > 127:
                    raise ValueError(f"SDP {where}: bad rtpmap {value[:60]!r}")
                pt = int(m.group(1))
                rtpmaps[pt] = RtpMap(pt, m.group(2), int(m.group(3)), int(m.group(4) or 1))
            elif name == "fmtp" and value is not None and (f := _FMTP.fullmatch(value)):
                fmtp[int(f.group(1))] = f.group(2).strip()
            # ptime and rtcp are hints: a malformed one is ignored rather than failing the call.
            elif name in ("ptime", "maxptime") and value is not None and (p := _PTIME.fullmatch(value)):
                if name == "ptime":
                    ptime = int(p.group(1)) or None
                else:
                    maxptime = int(p.group(1)) or None
            elif name == "rtcp" and value is not None and (r := _RTCP.fullmatch(value)):
                if 0 < int(r.group(1)) <= 65535:
                    rtcp_port, rtcp_address = int(r.group(1)), r.group(2)
    return Media(
        kind=kind.lower(),
        port=port,
        port_count=int(port_match.group(2) or 1),
        proto=proto,
        formats=tuple(formats),
        connection=connection,
        direction=direction or "sendrecv",
        rtpmaps=rtpmaps,
        fmtp=fmtp,
        ptime=ptime,
        maxptime=maxptime,
        rtcp_port=rtcp_port,
        rtcp_address=rtcp_address,
        attributes=tuple(attributes),
        lines=tuple(lines),
    )


def parse(text: str) -> SessionDescription:
    """Parse a session description (CRLF or bare LF line ends, blank lines and trailing blanks ignored).

    `ValueError` naming the line when the text is not SDP or a line that negotiation depends on (v, o,
    c, m, a=rtpmap) is malformed; other lines are kept as they are and not interpreted."""
    lines = [line.rstrip() for line in _SPLIT.split(text.lstrip("\ufeff"))]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("SDP is empty")
    for number, line in enumerate(lines, 1):
        if _LINE.fullmatch(line) is None:
            raise ValueError(f"SDP line {number}: expected '<letter>=<value>', got {line[:60]!r}")
    if lines[0] != "v=0":
        raise ValueError(f"SDP must start with v=0, got {lines[0][:60]!r}")
    first_media = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    session = lines[:first_media]
    origin: Origin | None = None
    session_name = "-"
    connection: str | None = None
    direction: Direction | None = None
    attributes: list[tuple[str, str | None]] = []
    for line in session[1:]:
        kind, value = line[0], line[2:]
        if kind == "o":
            parts = value.split()
            if len(parts) != 6 or not parts[2].isdigit():
                raise ValueError(
                    f"SDP o= must be '<user> <id> <version> IN IP4 <address>', got {value[:60]!r}"
                )
            origin = Origin(
                username=parts[0],
                session_id=parts[1],
                version=int(parts[2]),
                net_type=parts[3],
                addr_type=parts[4],
                address=parts[5],
            )
        elif kind == "s":
            session_name = value
        elif kind == "c":
            connection = _connection(value, "session")
        elif kind == "a":
            name, attr_value = _attribute(value)
            attributes.append((name, attr_value))
            if name in DIRECTIONS and attr_value is None:
                direction = cast(Direction, name)
    if origin is None:
        raise ValueError("SDP has no o= line")  # RFC 4566 §5.2: mandatory, and re-offers are told by it
    sections: list[list[str]] = []
    for line in lines[first_media:]:
        if line.startswith("m="):
            sections.append([line])
        else:
            sections[-1].append(line)
    media = tuple(_media(section, connection, direction, i) for i, section in enumerate(sections))
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        direction=direction,
        attributes=tuple(attributes),
        media=media,
        lines=tuple(session),
    )


def _addr_type(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"  # a host name (RFC 4566 §5.7 allows an FQDN); IP4 is what PBXes expect


def _check_port(port: int) -> None:
    if not 0 < port <= 65535:
        raise ValueError(f"RTP port {port} out of range 1..65535")


def _header(address: str, session_id: str | None, version: int, t_line: str = "t=0 0") -> list[str]:
    if not address:
        raise ValueError("no address for the SDP")
    sid = session_id or str(secrets.randbelow(2**62) + 1)
    addr_type = _addr_type(address)
    return [
        "v=0",
        f"o=- {sid} {version} IN {addr_type} {address}",
        "s=-",
        f"c=IN {addr_type} {address}",
        t_line,
    ]


def offer(
    address: str,
    port: int,
    codecs: Sequence[str] = SUPPORTED,
    telephone_event: bool = True,
    session_id: str | None = None,
    version: int = 1,
    direction: Direction = "sendrecv",
    ptime: int = DEFAULT_PTIME,
) -> str:
    """An SDP offer of one audio stream at `address`:`port`, `codecs` in preference order.

    Every format gets an a=rtpmap, static ones too: RFC 3264 §5.1 recommends it and some PBXes match
    codecs by name only. A re-offer keeps `session_id` and passes a higher `version` (RFC 3264 §8)."""
    _check_port(port)
    if direction not in _FLAGS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    chosen: list[RtpMap] = []
    for name in codecs:
        known = _OURS.get(name.upper())
        if known is None:
            raise ValueError(f"cannot offer codec {name!r} (known: {', '.join(_OURS)})")
        if known not in chosen:
            chosen.append(known)
    if not chosen:
        raise ValueError("no codec to offer")
    pts = [str(c.pt) for c in chosen]
    if telephone_event:
        pts.append(str(TELEPHONE_EVENT_PT))
    lines = _header(address, session_id, version)
    lines.append(f"m=audio {port} RTP/AVP {' '.join(pts)}")
    lines += [f"a=rtpmap:{c.pt} {c.encoding}/{c.clock_rate}" for c in chosen]
    if telephone_event:
        # RFC 4733 has the event clock match the audio codec's; all three codecs here run at 8000.
        lines += [
            f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000",
            f"a=fmtp:{TELEPHONE_EVENT_PT} {TELEPHONE_EVENTS}",
        ]
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def _remote_flags(m: Media) -> tuple[bool, bool]:
    """(remote sends, remote receives) for a section the remote wrote."""
    sends, receives = _FLAGS[m.direction]
    if m.connection == _LEGACY_HOLD:
        receives = False  # RFC 3264 §8.4: neither RTP nor RTCP is to be sent to 0.0.0.0
    return sends, receives


def _pick(m: Media, supported: Sequence[str], prefer: Sequence[str] | None) -> RtpMap | None:
    wanted = {name.upper() for name in supported}
    # The name alone is not enough: PCMU/16000 or stereo G.722 are not the formats the codecs here speak.
    common = [
        c
        for c in m.codecs
        if c.name in wanted
        and c.channels == 1
        and (c.name not in _OURS or c.clock_rate == _OURS[c.name].clock_rate)
    ]
    for name in prefer or ():
        for c in common:
            if c.name == name.upper():
                return c
    return common[0] if common else None  # RFC 3264 §6.1: the offerer's order decides by default


def _sendable(address: str) -> bool:
    """Whether RTP can go to `address`: the RTP sockets are IPv4 and nothing resolves host names (RFC 4566
    §5.7 allows them; uvloop's sendto refuses anything but an address of the socket's family)."""
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


def _rtcp_port(m: Media) -> int:
    # RFC 3605 a=rtcp when given, else the next port up (RFC 3550 §11), which port 65535 does not have.
    return m.rtcp_port or min(m.port + 1, 65535)


def _rejected(m: Media) -> str:
    # RFC 3264 §6: a rejected stream keeps its m-line with port 0 and at least one format.
    return f"m={m.kind} 0 {m.proto} {' '.join(m.formats) or '0'}"


def _event_for(m: Media, clock_rate: int) -> RtpMap | None:
    return next((e for e in m.telephone_events if e.clock_rate == clock_rate), None)


def answer(
    offer: SessionDescription,
    address: str,
    port: int,
    supported: Sequence[str] = SUPPORTED,
    prefer: Sequence[str] | None = None,
    *,
    telephone_event: bool = True,
    direction: Direction = "sendrecv",
    session_id: str | None = None,
    version: int = 1,
    ptime: int = DEFAULT_PTIME,
) -> tuple[str, Negotiated]:
    """Answer `offer` with our audio at `address`:`port` (RFC 3264 §6), and what was agreed.

    Every offered m-line gets one in the answer, in order; the first plain-RTP audio line with a codec in
    `supported` is accepted and all others are rejected with port 0. The codec is the first common one in
    the offer's order, or in `prefer`'s when given; only it (and telephone-event, echoed with the
    offerer's payload type) is answered, so the remote cannot switch codecs mid-call. The direction
    mirrors the offer's (sendonly gets recvonly) and is narrowed by ours (`direction="sendonly"` while we
    hold). For a re-offer, keep `session_id` and raise `version` (§8). `NoCommonMedia` when no audio line
    can be accepted."""
    _check_port(port)
    out = _header(address, session_id, version, next((x for x in offer.lines if x.startswith("t=")), "t=0 0"))
    negotiated: Negotiated | None = None
    reasons: list[str] = []
    for index, m in enumerate(offer.media):
        label = f"m-line {index + 1} ({m.kind} {m.proto})"
        codec = None
        if negotiated is not None:
            reasons.append(f"{label}: one audio stream per call")
        elif m.kind != "audio":
            reasons.append(f"{label}: not audio")
        elif m.port == 0:
            reasons.append(f"{label}: rejected in the offer")
        elif m.proto.upper() not in _PLAIN_RTP:
            reasons.append(f"{label}: not plain RTP")
        elif m.connection is None:
            reasons.append(f"{label}: no connection address")
        elif not _sendable(m.connection):
            reasons.append(f"{label}: connection address {m.connection[:60]!r} is not an IPv4 address")
        elif (codec := _pick(m, supported, prefer)) is None:
            offered = ", ".join(f"{c.encoding}/{c.clock_rate}" for c in m.codecs) or "nothing known"
            reasons.append(f"{label}: no codec in common (offered {offered})")
        if codec is None or m.connection is None or not _sendable(m.connection):
            out.append(_rejected(m))
            continue
        event = _event_for(m, codec.clock_rate) if telephone_event else None
        remote_sends, remote_receives = _remote_flags(m)
        local_sends, local_receives = _FLAGS[direction]
        ours = _BY_FLAGS[(local_sends and remote_receives, local_receives and remote_sends)]
        pts = [str(codec.pt)] + ([str(event.pt)] if event else [])
        out.append(f"m=audio {port} {m.proto} {' '.join(pts)}")
        channels = f"/{codec.channels}" if codec.channels != 1 else ""
        out.append(f"a=rtpmap:{codec.pt} {codec.encoding}/{codec.clock_rate}{channels}")
        if codec.pt in m.fmtp:
            out.append(f"a=fmtp:{codec.pt} {m.fmtp[codec.pt]}")
        if event:
            out += [
                f"a=rtpmap:{event.pt} {event.encoding}/{event.clock_rate}",
                f"a=fmtp:{event.pt} {TELEPHONE_EVENTS}",
            ]
        out += [f"a=ptime:{ptime}", f"a={ours}"]
        negotiated = Negotiated(
            codec=codec.name,
            payload_type=codec.pt,
            clock_rate=codec.clock_rate,
            telephone_event_pt=event.pt if event else None,
            remote_address=m.connection,
            remote_port=m.port,
            # rtcp-mux is not answered: RTCP goes to its own port
            remote_rtcp_port=_rtcp_port(m),
            direction=ours,
            ptime=m.ptime or DEFAULT_PTIME,
        )
    if negotiated is None:
        raise NoCommonMedia("no acceptable audio in the offer: " + ("; ".join(reasons) or "no m-lines"))
    return "\r\n".join(out) + "\r\n", negotiated


def negotiated_from_answer(offer_text: str, answer: SessionDescription) -> Negotiated:
    """What the remote's `answer` to our `offer_text` agreed (RFC 3264 §7): the first format of the
    accepted audio line that we offered, with the answer's payload numbers, address and direction.

    `ValueError` if the answer does not fit the offer (another m-line count, a codec we did not offer);
    `NoCommonMedia` if it rejected all our audio."""
    ours = parse(offer_text)
    if len(ours.media) != len(answer.media):
        raise ValueError(
            f"answer has {len(answer.media)} m-lines for an offer of {len(ours.media)} (RFC 3264 §6)"
        )
    for om, am in zip(ours.media, answer.media, strict=True):
        if om.kind != "audio" or om.port == 0 or am.port == 0:
            continue
        offered = {(c.name, c.clock_rate) for c in om.codecs if c.name != "TELEPHONE-EVENT"}
        codec = next(
            (c for c in am.codecs if c.name != "TELEPHONE-EVENT" and (c.name, c.clock_rate) in offered), None
        )
        if codec is None:
            raise ValueError(f"answer chose no codec we offered (it has {' '.join(am.formats)})")
        if am.connection is None:
            raise ValueError("answer has no connection address for its audio")
        if not _sendable(am.connection):
            raise ValueError(f"answer's connection address {am.connection[:60]!r} is not an IPv4 address")
        event = _event_for(am, codec.clock_rate) if om.telephone_events else None
        offered_sends, offered_receives = _FLAGS[om.direction]
        remote_sends, remote_receives = _remote_flags(am)
        return Negotiated(
            codec=codec.name,
            payload_type=codec.pt,
            clock_rate=codec.clock_rate,
            telephone_event_pt=event.pt if event else None,
            remote_address=am.connection,
            remote_port=am.port,
            remote_rtcp_port=_rtcp_port(am),
            direction=_BY_FLAGS[(offered_sends and remote_receives, offered_receives and remote_sends)],
            ptime=am.ptime or DEFAULT_PTIME,
        )
    raise NoCommonMedia("the answer rejected every audio stream we offered")


def is_hold(sd: SessionDescription) -> bool:
    """Whether a (re-)offer puts us on hold (RFC 3264 §8.4): its active audio is sendonly or inactive, or
    uses the legacy c=0.0.0.0."""
    return any(m.kind == "audio" and m.port != 0 and not _remote_flags(m)[1] for m in sd.media)


def bump(sdp_text: str) -> str:
    """`sdp_text` with its o= version one higher, for a re-offer that changes the session (RFC 3264 §8:
    the version rises by one with each change). Everything else, line ends included, is kept."""
    m = _ORIGIN_VERSION.search(sdp_text)
    if m is None:
        raise ValueError("SDP has no o= line with a numeric version")
    return f"{sdp_text[: m.start(2)]}{int(m.group(2)) + 1}{sdp_text[m.end(2) :]}"
