"""SIP messages (RFC 3261 §7, §20, §25): parsing, the header multi-map, structured header values, serialising.

`parse(data)` takes one message as it arrived in a datagram, or as `transport.split_stream` cut it from a
stream, and returns a `Request` or `Response`, or raises `SipParseError` (never anything else). It is
strict where a wrong guess would misroute or mismatch a message (start line, version, mandatory headers,
CSeq, Content-Length, Via, the addresses) and tolerant where RFC 3261 and the RFC 4475 torture tests ask
for it: leading CRLFs, folded lines, blanks around colons and separators, any case in header names and
compact forms, unknown methods, headers and URI schemes, empty reason phrases, a missing Max-Forwards or
Content-Length (RFC 2543 peers). What it tolerated is listed in the message's `defects`.

Headers are kept as text, one entry per value: a line holding a comma-separated list (for the headers whose
grammar is a list) becomes one entry per element, so `get_all("Via")` is the whole Via stack. Structured
values (`via`, `from_`, `to`, `cseq`, `contacts`...) are parsed from that text on first use and cached
until the header changes; `parse` uses them all once, which is how it validates.

`serialize()` writes every value on its own line under the full header name and always writes
Content-Length from the body; a `Content-Length` entry in the headers is ignored (parse removes it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from worker.sip.uri import (
    AbsoluteUri,
    NameAddr,
    Params,
    SipParseError,
    SipUri,
    Uri,
    format_host,
    format_params,
    has_param,
    is_token,
    param_value,
    parse_name_addr,
    parse_params,
    parse_uri,
    set_param,
    skip_lws,
    valid_host,
)

__all__ = [
    "REASONS",
    "CSeq",
    "Headers",
    "MediaType",
    "Request",
    "Response",
    "SipParseError",
    "Via",
    "canonical_name",
    "parse",
    "parse_cseq",
    "parse_media_type",
    "parse_via",
    "response_to",
]

T = TypeVar("T")

_FULL_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Accept-Resource-Priority",
    "Alert-Info", "Allow", "Allow-Events", "Answer-Mode", "Authentication-Info", "Authorization", "Call-ID",
    "Call-Info", "Contact", "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event", "Expires", "Feature-Caps",
    "Flow-Timer", "From", "Geolocation", "History-Info", "Identity", "Identity-Info", "In-Reply-To",
    "Info-Package", "Join", "Max-Breadth", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route",
    "Recv-Info", "Refer-Sub", "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Resource-Priority", "Retry-After", "Route", "RSeq", "Security-Client",
    "Security-Server", "Security-Verify", "Server", "Service-Route", "Session-Expires", "Session-ID",
    "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported", "Target-Dialog", "Timestamp",
    "To", "Unsupported", "User-Agent", "User-to-User", "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip
# Compact forms: RFC 3261 §7.3.3 (c e f i k l m s t v), RFC 3841 (a d j), RFC 3892 (b), RFC 3515 (r),
# RFC 6665 (o u), RFC 4028 (x), RFC 4474 (n y; y kept by RFC 8224).
_COMPACT = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip
_NAMES: dict[str, tuple[str, str]] = {name.lower(): (name.lower(), name) for name in _FULL_NAMES}
_NAMES.update({short: (full.lower(), full) for short, full in _COMPACT.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1: only those may be combined on one line).
# The authentication headers are not here: their commas separate digest parameters, not values.
_LIST_HEADERS = frozenset({
    "accept", "accept-contact", "accept-encoding", "accept-language", "accept-resource-priority",
    "alert-info", "allow", "allow-events", "call-info", "contact", "content-encoding", "content-language",
    "diversion", "error-info", "feature-caps", "geolocation", "history-info", "in-reply-to",
    "p-asserted-identity", "p-preferred-identity", "path", "proxy-require", "reason", "record-route",
    "recv-info", "reject-contact", "request-disposition", "require", "resource-priority", "route",
    "security-client", "security-server", "security-verify", "service-route", "supported", "unsupported",
    "via", "warning",
})  # fmt: skip
# Lists whose elements are addresses or Vias: an empty element is a syntax error (RFC 4475 §3.1.2.1).
_STRICT_LISTS = frozenset({"via", "contact", "route", "record-route"})
# At most one of each (RFC 4475 §3.3.8, §3.3.9).
_SINGLE = ("call-id", "cseq", "from", "to", "max-forwards", "content-type", "content-length")
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")  # RFC 3261 §8.1.1; Max-Forwards is tolerated

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_WORD_CHARS = _TOKEN_CHARS + r"()<>:\\\"/\[\]?{}"
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_SENT_PROTOCOL = re.compile(
    rf"([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]+"
)
_SENT_BY = re.compile(r"(\[[^\]]*\]|[^ \t:;,\[\]]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?")
_CSEQ = re.compile(rf"([0-9]+)[ \t]+([{_TOKEN_CHARS}]+)")
_CALL_ID = re.compile(rf"[{_WORD_CHARS}]+(?:@[{_WORD_CHARS}]+)?")
_MEDIA_TYPE = re.compile(rf"([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)")
_LIST_STOP = re.compile(r'[,"<]')
_NONE: list[str] = []  # the values of an absent header; never handed out to be modified
_QUOTED_TAIL = re.compile(r'(?:[^"\\]|\\.)*"')


def canonical_name(name: str) -> str:
    """The full, conventionally cased name of a header (`v` and `VIA` are `Via`); unknown names unchanged."""
    known = _NAMES.get(name.lower())
    return known[1] if known else name


def _name(name: str) -> tuple[str, str]:
    """(lookup key, name to write) for a header name."""
    lower = name.lower()
    return _NAMES.get(lower) or (lower, name)


def _split_list(value: str) -> list[str]:
    """The elements of a comma-separated header value, not splitting inside quoted strings or <...>
    (RFC 3261 §7.3.1). An unterminated quote or bracket keeps the rest as one element for its parser to
    reject."""
    out: list[str] = []
    start = pos = 0
    while True:
        m = _LIST_STOP.search(value, pos)
        if m is None:
            out.append(value[start:].strip(" \t"))
            return out
        at = m.start()
        char = m.group()
        if char == ",":
            out.append(value[start:at].strip(" \t"))
            start = pos = at + 1
        elif char == '"':
            q = _QUOTED_TAIL.match(value, at + 1)
            if q is None:
                out.append(value[start:].strip(" \t"))
                return out
            pos = q.end()
        else:
            close = value.find(">", at + 1)
            if close < 0:
                out.append(value[start:].strip(" \t"))
                return out
            pos = close + 1


class Headers:
    """The header fields of a message, in order: a multi-map from case-insensitive names (compact forms
    mapped to full ones) to text values, one entry per value.

    Values given to `add`, `set` and `prepend` for list headers (Via, Contact, Route, Supported, ...) are
    split at top-level commas like parsed ones. Values must not hold CR or LF (header injection)."""

    __slots__ = ("_items", "_cache", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (key, name as written out, value)
        self._cache: dict[str, object] = {}  # key -> structured value
        self._index: dict[str, list[str]] | None = None  # key -> values, rebuilt after a change
        for name, value in items:
            self.add(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        values = self._values(_name(name)[0])
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order (all lines, each list split into its elements)."""
        return list(self._values(_name(name)[0]))

    def count(self, name: str) -> int:
        """How many values `name` has."""
        return len(self._values(_name(name)[0]))

    def add(self, name: str, value: str) -> None:
        """Append `value` (split if `name` is a list header) after all others."""
        key, written = self._checked(name)
        self._items.extend((key, written, v) for v in self._split(key, value))
        self._changed(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert `value` before the first value of `name` (at the top when there is none), as a new Via or
        Record-Route goes on top (RFC 3261 §8.1.1.7, §16.6)."""
        key, written = self._checked(name)
        at = next((i for i, item in enumerate(self._items) if item[0] == key), 0)
        self._items[at:at] = [(key, written, v) for v in self._split(key, value)]
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Replace every value of `name` with `value`, where the first one was (else at the end)."""
        key, written = self._checked(name)
        new = [(key, written, v) for v in self._split(key, value)]
        at = next((i for i, item in enumerate(self._items) if item[0] == key), len(self._items))
        rest = [item for item in self._items[at:] if item[0] != key]
        self._items[at:] = new + rest
        self._changed(key)

    def remove(self, name: str) -> int:
        """Remove every value of `name`; how many there were."""
        key = _name(name)[0]
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        self._changed(key)
        return before - len(self._items)

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of `name` (a proxy's own Via off a response, RFC 3261 §16.7)."""
        key = _name(name)[0]
        for i, item in enumerate(self._items):
            if item[0] == key:
                del self._items[i]
                self._changed(key)
                return item[2]
        return None

    def copy(self) -> Headers:
        """An independent copy."""
        other = Headers()
        other._items = list(self._items)
        return other

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name, value) pairs in order, names as they will be written."""
        return ((item[1], item[2]) for item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for _, n, v in self._items]!r})"

    def _changed(self, key: str) -> None:
        self._cache.pop(key, None)
        self._index = None

    def _values(self, key: str) -> list[str]:
        index = self._index
        if index is None:
            index = {}
            for item in self._items:
                if item[0] in index:
                    index[item[0]].append(item[2])
                else:
                    index[item[0]] = [item[2]]
            self._index = index
        return index.get(key, _NONE)

    @staticmethod
    def _checked(name: str) -> tuple[str, str]:
        if not is_token(name):
            raise ValueError(f"not a header name: {name!r}")
        return _name(name)

    @staticmethod
    def _split(key: str, value: str) -> list[str]:
        if "\r" in value or "\n" in value:
            raise ValueError(f"CR or LF in the value of {key}")
        value = value.strip(" \t")
        if key in _LIST_HEADERS and "," in value:
            return [v for v in _split_list(value) if v] or [""]
        return [value]

    def _load(self, name: str, value: str) -> str | None:
        """Add a parsed line (name already checked); the problem with it, if any."""
        key, written = _name(name)
        self._index = None
        value = value.strip(" \t")
        if key in _LIST_HEADERS and "," in value:
            values = _split_list(value)
            if "" in values:
                if key in _STRICT_LISTS:
                    self._items.append((key, written, value))
                    return f"empty element in {written}: {value[:80]!r}"
                values = [v for v in values if v] or [""]
            self._items.extend((key, written, v) for v in values)
        else:
            self._items.append((key, written, value))
        return None

    def _structured(self, key: str, build: Callable[[list[str]], T]) -> T:
        """The parsed form of header `key` (full lower-case name), cached until the header changes."""
        try:
            return cast(T, self._cache[key])
        except KeyError:
            pass
        value = build(list(self._values(key)))
        self._cache[key] = value
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Via:
    """One Via value (RFC 3261 §20.42): sent-protocol, sent-by and parameters (`branch`, `received`,
    `rport` of RFC 3581, `maddr`, `ttl`, ...; values as written). `host` has no IPv6 brackets."""

    transport: str  # upper case: UDP, TCP, TLS, SCTP, WS, ...
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP"
    version: str = "2.0"

    def param(self, name: str) -> str | None:
        """The value of parameter `name` (None when absent or valueless)."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether parameter `name` is present (a bare `rport` asks for the source port, RFC 3581 §3)."""
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with parameter `name` set (`received`, `rport` as a server fills them in, RFC 3581 §4)."""
        return replace(self, params=set_param(self.params, name, value))

    @property
    def branch(self) -> str | None:
        """The transaction branch (RFC 3261 §8.1.1.7), or None (RFC 2543 peers)."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The `received` address a server added (RFC 3261 §18.2.1), without IPv6 brackets."""
        value = self.param("received")
        return value[1:-1] if value and value.startswith("[") and value.endswith("]") else value

    @property
    def rport(self) -> int | None:
        """The `rport` port a server filled in (RFC 3581 §4); None when absent or still empty."""
        value = self.param("rport")
        return int(value) if value and value.isascii() and value.isdigit() and len(value) <= 5 else None

    @property
    def sent_protocol(self) -> str:
        """`SIP/2.0/UDP`."""
        return f"{self.protocol}/{self.version}/{self.transport}"

    @property
    def sent_by(self) -> str:
        """`host[:port]` as written in the Via."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.sent_protocol} {self.sent_by}{format_params(self.params)}"


def parse_via(text: str) -> Via:
    """One Via value; blanks are allowed around `/`, `:`, `;` and `=` (RFC 3261 §25.1 SLASH, COLON, SEMI)."""
    m = _SENT_PROTOCOL.match(text)
    if m is None:
        raise SipParseError(f"bad Via sent-protocol in {text[:80]!r}")
    by = _SENT_BY.match(text, m.end())
    if by is None:
        raise SipParseError(f"no Via sent-by in {text[:80]!r}")
    host = by.group(1)
    if host.startswith("["):
        host = host[1:-1]
        if ":" not in host:
            raise SipParseError(f"not an IPv6 address in brackets in Via {text[:80]!r}")
    if not valid_host(host):
        raise SipParseError(f"bad Via host in {text[:80]!r}")
    port = int(by.group(2)) if by.group(2) else None
    if port is not None and port > 65535:
        raise SipParseError(f"bad Via port in {text[:80]!r}")
    params, pos = parse_params(text, by.end())
    if skip_lws(text, pos) != len(text):
        raise SipParseError(f"unexpected text in Via {text[:80]!r}")
    return Via(
        transport=m.group(3).upper(),
        host=host,
        port=port,
        params=params,
        protocol=m.group(1).upper(),
        version=m.group(2),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CSeq:
    """A CSeq value (RFC 3261 §20.16): sequence number (32 bits) and method."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """`number method`, the number below 2**32 (RFC 3261 §8.1.1.5)."""
    m = _CSEQ.fullmatch(text)
    if m is None:
        raise SipParseError(f"bad CSeq {text[:80]!r}")
    number = _bounded_int(m.group(1), 0xFFFFFFFF)
    if number is None:
        raise SipParseError("CSeq number larger than 2**32-1 (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.4)")
    return CSeq(number=number, method=m.group(2))


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaType:
    """A Content-Type value (RFC 3261 §20.15): type and subtype in lower case, parameters as written."""

    type: str
    subtype: str
    params: Params = ()

    @property
    def mime(self) -> str:
        """`type/subtype`, e.g. `application/sdp`."""
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        """The value of parameter `name` (`boundary`, `charset`...), quotes included, or None."""
        return param_value(self.params, name)

    def __str__(self) -> str:
        return self.mime + format_params(self.params)


def parse_media_type(text: str) -> MediaType:
    """`type/subtype;params`."""
    m = _MEDIA_TYPE.match(text)
    if m is None:
        raise SipParseError(f"bad Content-Type {text[:80]!r}")
    params, pos = parse_params(text, m.end())
    if skip_lws(text, pos) != len(text):
        raise SipParseError(f"unexpected text in Content-Type {text[:80]!r}")
    return MediaType(type=m.group(1).lower(), subtype=m.group(2).lower(), params=params)


def _bounded_int(digits: str, limit: int) -> int | None:
    """An ASCII digit string's value if at most `limit` (None otherwise), without converting huge numbers."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(limit)):
        return None
    value = int(digits)
    return value if value <= limit else None


def _single(values: list[str], name: str) -> str:
    if not values:
        raise SipParseError(f"no {name}")
    if len(values) > 1:
        raise SipParseError(f"more than one {name} (RFC 4475 §3.3.8)")
    return values[0]


def _vias(values: list[str]) -> tuple[Via, ...]:
    return tuple(parse_via(v) for v in values)


def _from(values: list[str]) -> NameAddr:
    return parse_name_addr(_single(values, "From"))


def _to(values: list[str]) -> NameAddr:
    return parse_name_addr(_single(values, "To"))


def _call_id(values: list[str]) -> str:
    value = _single(values, "Call-ID")
    if _CALL_ID.fullmatch(value) is None:
        raise SipParseError(f"bad Call-ID {value[:80]!r}")
    return value


def _cseq(values: list[str]) -> CSeq:
    return parse_cseq(_single(values, "CSeq"))


def _max_forwards(values: list[str]) -> int | None:
    if not values:
        return None
    value = _single(values, "Max-Forwards")
    number = _bounded_int(value, 255) if value.isascii() and value.isdigit() else None
    if number is None:
        raise SipParseError(f"bad Max-Forwards {value[:80]!r} (RFC 3261 §20.22: 0 to 255)")
    return number


def _contacts(values: list[str]) -> tuple[NameAddr, ...]:
    if "*" in values:
        if len(values) > 1:
            raise SipParseError("Contact: * must be the only Contact (RFC 3261 §10.2.2)")
        return ()
    return tuple(parse_name_addr(v) for v in values)


def _routes(values: list[str]) -> tuple[NameAddr, ...]:
    return tuple(parse_name_addr(v, bare=False) for v in values)


def _content_type(values: list[str]) -> MediaType | None:
    return parse_media_type(_single(values, "Content-Type")) if values else None


class _Message:
    """What requests and responses share: the structured header accessors and serialising."""

    __slots__ = ()
    headers: Headers
    body: bytes

    @property
    def via(self) -> tuple[Via, ...]:
        """Every Via, top (most recent hop) first."""
        return self.headers._structured("via", _vias)

    @property
    def top_via(self) -> Via:
        """The first Via (RFC 3261 §17.2.3 matches transactions on its branch)."""
        vias = self.via
        if not vias:
            raise SipParseError("no Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        """The From address (with its `tag`)."""
        return self.headers._structured("from", _from)

    @property
    def to(self) -> NameAddr:
        """The To address (with its `tag` once in a dialog)."""
        return self.headers._structured("to", _to)

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self.headers._structured("call-id", _call_id)

    @property
    def cseq(self) -> CSeq:
        """The CSeq number and method."""
        return self.headers._structured("cseq", _cseq)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0 to 255), None when absent."""
        return self.headers._structured("max-forwards", _max_forwards)

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        """Every Contact (empty for `Contact: *`, see `contact_wildcard`)."""
        return self.headers._structured("contact", _contacts)

    @property
    def contact_wildcard(self) -> bool:
        """Whether the Contact is `*` (a REGISTER removing every binding, RFC 3261 §10.2.2)."""
        return self.headers.get("Contact") == "*"

    @property
    def routes(self) -> tuple[NameAddr, ...]:
        """Every Route, in order."""
        return self.headers._structured("route", _routes)

    @property
    def record_routes(self) -> tuple[NameAddr, ...]:
        """Every Record-Route, in order."""
        return self.headers._structured("record-route", _routes)

    @property
    def content_type(self) -> MediaType | None:
        """The Content-Type, or None."""
        return self.headers._structured("content-type", _content_type)

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines += [f"{name}: {value}" for key, name, value in self.headers._items if key != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True)
class Request(_Message):
    """A SIP request. `method` is case-sensitive (RFC 3261 §7.1); `defects` lists what `parse` tolerated."""

    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    defects: tuple[str, ...] = ()

    def serialize(self) -> bytes:
        """The message on the wire, Content-Length from the body."""
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")


@dataclass(slots=True)
class Response(_Message):
    """A SIP response; `defects` lists what `parse` tolerated."""

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    defects: tuple[str, ...] = ()

    def serialize(self) -> bytes:
        """The message on the wire, Content-Length from the body."""
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")


def parse(data: bytes) -> Request | Response:
    """One SIP message (datagram framing: without Content-Length the body is the rest of the data).

    Raises `SipParseError` with the status a UAS answers (400; 505 for another SIP version) and, for
    requests whose header section could be read, the unvalidated request as `partial`."""
    data = bytes(data)
    start = 0
    while data.startswith(b"\r\n", start):  # keep-alives before the start line (RFC 3261 §7.5)
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("no empty line after the header section (RFC 3261 §7)")
    # UTF-8 is the charset of SIP text (RFC 3261 §7.3); undecodable octets survive as surrogates and are
    # written back unchanged.
    lines = data[start:end].decode("utf-8", "surrogateescape").split("\r\n")
    first = lines[0]
    if "\r" in first or "\n" in first:
        raise SipParseError("bare CR or LF in the start line")
    headers, problem = _read_headers(lines)
    if first[:4].upper() == "SIP/":
        return _response(first, headers, problem, data[end + 4 :])
    return _request(first, headers, problem, data[end + 4 :])


def _read_headers(lines: list[str]) -> tuple[Headers, str | None]:
    """The header lines after the start line, unfolded (RFC 3261 §7.3.1), and the first problem found;
    bad lines are left out so that a partial request can still be answered."""
    logical: list[list[str]] = []  # the pieces of each header line, joined once (no quadratic concatenation)
    problem: str | None = None
    for i in range(1, len(lines)):
        line = lines[i]
        if line[:1] in (" ", "\t"):
            if logical:
                logical[-1].append(line.lstrip(" \t"))
            else:
                problem = problem or "a continuation line right after the start line"
        else:
            logical.append([line])
    headers = Headers()
    for pieces in logical:
        line = pieces[0] if len(pieces) == 1 else " ".join(pieces)
        if "\r" in line or "\n" in line:
            problem = problem or "bare CR or LF in the header section (RFC 3261 §7)"
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")  # HCOLON allows blanks before the colon (RFC 3261 §25.1)
        if not colon or not is_token(name):
            problem = problem or f"bad header line {line[:80]!r}"
            continue
        error = headers._load(name, value)
        problem = problem or error
    return headers, problem


def _request(first: str, headers: Headers, problem: str | None, rest: bytes) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.7-10: blanks in the Request-URI, doubled or trailing SP may be rejected, and
        # guessing what was meant is how proxies get fooled; answering 400 is the safe reading.
        loose = first.split()
        partial = None
        if len(loose) >= 3 and is_token(loose[0]) and _VERSION.fullmatch(loose[-1]):
            partial = Request(loose[0], AbsoluteUri(" ".join(loose[1:-1])), headers)
        raise SipParseError(
            "the request line must be Method SP Request-URI SP SIP-Version (RFC 3261 §7.1)", partial=partial
        )
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError(f"not a SIP request line: {first[:80]!r}")
    uri_problem = None
    try:
        uri: Uri = parse_uri(uri_text)
    except SipParseError as e:
        uri, uri_problem = AbsoluteUri(uri_text), e.reason
    request = Request(method, uri, headers)
    if version.upper() != "SIP/2.0":
        if _VERSION.fullmatch(version):
            raise SipParseError(f"{version} is not supported (RFC 3261 §8.2.1)", 505, partial=request)
        raise SipParseError(f"bad SIP-Version {version[:20]!r}", partial=request)
    if problem:
        raise SipParseError(problem, partial=request)
    defects: list[str] = []
    request.body = _take_body(headers, rest, defects, request)
    if uri_problem:
        raise SipParseError(f"bad Request-URI: {uri_problem}", partial=request)
    if isinstance(uri, SipUri) and uri.headers:
        raise SipParseError("a Request-URI must not have headers (RFC 3261 §19.1.1)", partial=request)
    _check(request, defects)
    if request.cseq.method != method:
        raise SipParseError(
            "the CSeq method differs from the request method (RFC 3261 §8.1.1.5)", partial=request
        )
    if request.max_forwards is None:
        defects.append("no Max-Forwards (RFC 3261 §8.1.1.6 requires it; RFC 2543 peers omit it)")
    request.defects = tuple(defects)
    return request


def _response(first: str, headers: Headers, problem: str | None, rest: bytes) -> Response:
    version, _, after = first.partition(" ")
    code, space, reason = after.partition(" ")
    if version.upper() != "SIP/2.0":
        status = 505 if _VERSION.fullmatch(version) else 400
        raise SipParseError(f"not a SIP/2.0 status line: {first[:80]!r}", status)
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
        raise SipParseError(f"bad status code in {first[:80]!r} (RFC 3261 §7.2)")
    if problem:
        raise SipParseError(problem)
    defects: list[str] = []
    if not space:
        defects.append("no SP after the status code")
    response = Response(int(code), reason, headers)
    response.body = _take_body(headers, rest, defects, None)
    _check(response, defects)
    response.defects = tuple(defects)
    return response


def _take_body(headers: Headers, rest: bytes, defects: list[str], partial: Request | None) -> bytes:
    """The body by Content-Length (RFC 3261 §18.3): shorter than it is an error, longer is cut (the extra
    octets of a datagram are ignored), absent means the rest of the datagram."""
    values = headers.get_all("Content-Length")
    if not values:
        defects.append("no Content-Length (RFC 3261 §18.3: the body is the rest of the datagram)")
        return rest
    if len(values) > 1:
        raise SipParseError("more than one Content-Length (RFC 4475 §3.3.9)", partial=partial)
    text = values[0]
    length = _bounded_int(text, len(rest)) if text.isascii() and text.isdigit() else -1
    if length is None:
        raise SipParseError("the body is shorter than Content-Length (RFC 3261 §18.3)", partial=partial)
    if length < 0:
        raise SipParseError(f"bad Content-Length {text[:20]!r}", partial=partial)
    if len(rest) > length:
        defects.append(f"{len(rest) - length} octets after the body ignored (RFC 3261 §18.3)")
    headers.remove("Content-Length")
    return rest[:length]


def _check(message: Request | Response, defects: list[str]) -> None:
    """Parse every header the SIP layers rely on, so that a message that passes has them all valid."""
    partial = message if isinstance(message, Request) else None
    headers = message.headers
    for key in _SINGLE:
        if len(headers._values(key)) > 1:
            raise SipParseError(f"more than one {canonical_name(key)} (RFC 4475 §3.3.8)", partial=partial)
    missing = [name for name in _MANDATORY if not headers._values(name.lower())]
    if missing:
        raise SipParseError(f"no {', '.join(missing)} (RFC 3261 §8.1.1)", partial=partial)
    try:
        message.via  # noqa: B018 - parsing is the check
        message.from_  # noqa: B018
        message.to  # noqa: B018
        message.call_id  # noqa: B018
        message.cseq  # noqa: B018
        message.max_forwards  # noqa: B018
        message.contacts  # noqa: B018
        message.routes  # noqa: B018
        message.record_routes  # noqa: B018
        message.content_type  # noqa: B018
    except SipParseError as e:
        raise SipParseError(e.reason, e.status, partial=partial) from None


REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    199: "Early Dialog Terminated", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority",
    420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
    423: "Interval Too Brief", 428: "Use Identity Header", 429: "Provide Referrer Identity",
    430: "Flow Failed", 433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support", 440: "Max-Breadth Exceeded",
    469: "Bad Info Package", 470: "Consent Needed", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}  # fmt: skip
"""Reason phrases (RFC 3261 §21 and the extensions that registered codes)."""


def response_to(
    request: Request, status: int, reason: str | None = None, to_tag: str | None = None
) -> Response:
    """A response to `request` as RFC 3261 §8.2.6 builds it: every Via in order, From, To, Call-ID and CSeq
    copied (Timestamp too for 100, §8.2.6.1), `to_tag` added to a To without one (§8.2.6.2; the UAS must
    add one to every response but 100 Trying, which is up to the caller). The reason defaults to the
    registered phrase. Works on a `SipParseError.partial` request too: what is missing is not copied.
    Dialog-forming responses also copy Record-Route (§12.1.1); that is the dialog's business."""
    if not 100 <= status <= 699:
        raise ValueError(f"not a SIP status code: {status}")
    if to_tag is not None and not is_token(to_tag):
        raise ValueError(f"not a tag: {to_tag!r}")
    source = request.headers
    headers = Headers()
    for via in source.get_all("Via"):
        headers._items.append(("via", "Via", via))
    for name in ("From", "To", "Call-ID", "CSeq") + (("Timestamp",) if status == 100 else ()):
        value = source.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None:
            value = _with_tag(value, to_tag)
        headers.add(name, value)
    if reason is None:
        reason = REASONS.get(status) or REASONS[status // 100 * 100]
    return Response(status, reason, headers)


def _with_tag(to: str, tag: str) -> str:
    try:
        current = parse_name_addr(to).tag
    except SipParseError:
        return to  # a broken To (answering a malformed request) is echoed as it came
    if current is None:
        return f"{to};tag={tag}"
    if current != tag:
        raise ValueError(f"the request's To already has tag {current!r} (RFC 3261 §8.2.6.2)")
    return to
