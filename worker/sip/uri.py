"""URIs and name-addr values: SIP/SIPS (RFC 3261 §19.1), tel (RFC 3966), any other absolute URI (RFC 2396).

Everything is parsed from text that `worker.sip.message` has already unfolded (RFC 3261 §7.3.1), so the
only whitespace left is SP and HTAB. Components are kept as written: user, password, host, parameter values
and URI headers stay escaped, so `str()` gives the URI back as it came, except that URI parameter names are
unescaped and lower-cased (RFC 3261 §19.1.4 makes both changes equivalent). `SipUri.equivalent` compares the
way §19.1.4 says. Hosts are stored without the brackets of an IPv6 reference; `str()` puts them back.

Scanning is linear: precompiled patterns whose alternatives never overlap, so no input makes them
backtrack more than once over a character. Errors are `SipParseError`, defined here because the URI grammar
is the lowest layer and the message parser raises the same type.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote


class SipParseError(ValueError):
    """Text that is not valid SIP: `reason` says what, `status` is the response it earns (400, or 505 for
    an unsupported version).

    `partial` is set when the message is a request whose start line and header section could be read: the
    request as far as it was parsed, unvalidated, so a UAS can still answer it with `status` (RFC 3261
    §8.2 answers a malformed request instead of dropping it). Its Request-URI may be an `AbsoluteUri` holding
    the raw text when that text was the problem. Malformed responses are dropped, so they have none.

    Not a `PbxError`: it never reaches the call API; the SIP layer answers it on the wire. `partial` is a
    `worker.sip.message.Request`, typed loosely: this module sits below message.py, which imports it."""

    def __init__(self, reason: str, status: int = 400, *, partial: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


Params = tuple[tuple[str, str | None], ...]
"""Parameters in order: (lower-cased name, value as written or None for a bare name)."""

# RFC 3261 §25.1 character classes.
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'

_TOKEN = re.compile(f"[{_TOKEN_CHARS}]+")
_LWS = re.compile(r"[ \t]*")
_QUOTED = re.compile(_QUOTED_STRING)
_QUOTED_PAIR = re.compile(r"\\(.)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
_PARAMCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")
_PARAM_PLAIN = re.compile(rf"[{_UNRESERVED}\[\]/:&+$]+")
_HNAME = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})+")
_HVALUE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*")
_URIC = re.compile(rf"(?:[A-Za-z0-9;/?:@&=+$,\-_.!~*'()\[\]#]|{_ESCAPED})+")
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT = re.compile(r"[0-9]{1,5}")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# A header parameter (RFC 3261 §25.1 generic-param): SEMI token [EQUAL gen-value]. gen-value is a token, a
# host or a quoted string; ':' and brackets are let in so that IPv6 addresses, bracketed or not (RFC 5118
# §4.5, §4.6), are values too.
_PARAM = re.compile(
    rf"[ \t]*;[ \t]*([{_TOKEN_CHARS}]+)(?:[ \t]*=[ \t]*({_QUOTED_STRING}|[{_TOKEN_CHARS}:\[\]]+))?"
)
# A display name of tokens, or none, then "<" (RFC 3261 §25.1 name-addr). Tokens are separated by at least
# one blank so that the pattern has a single way to match any input.
_DISPLAY_TOKENS = re.compile(rf"([{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*)?[ \t]*<")
_BARE_ADDR = re.compile(r"[^;, \t]+")
_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")  # RFC 3966 §5.1.1
_UNRESERVED_SET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")

# §19.1.4: these parameters make URIs differ when only one of them has it. The rule text names user, ttl,
# method and maddr; its examples also tell `sip:bob@biloxi.com` from `...;transport=udp`, so transport too.
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


def is_token(text: str) -> bool:
    """Whether `text` is an RFC 3261 token (methods, header names, parameter names, tags)."""
    return _TOKEN.fullmatch(text) is not None


def skip_lws(text: str, pos: int) -> int:
    """The index after the blanks at `pos`."""
    m = _LWS.match(text, pos)
    return m.end() if m else pos


def quote_string(text: str) -> str:
    """`text` as a quoted-string (RFC 3261 §25.1): backslash before `"` and `\\`."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_string(text: str) -> str:
    """The content of a quoted-string (with its quotes), quoted pairs resolved; other text unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", text[1:-1])
    return text


def parse_params(text: str, pos: int = 0) -> tuple[Params, int]:
    """The `;name[=value]` parameters starting at `pos` (blanks allowed around `;` and `=`), and the index
    where they end. Values are kept as written, quotes included; names are lower-cased (RFC 3261 §7.3.1)."""
    out: list[tuple[str, str | None]] = []
    while True:
        m = _PARAM.match(text, pos)
        if m is None:
            return tuple(out), pos
        out.append((m.group(1).lower(), m.group(2)))
        pos = m.end()


def param_value(params: Params, name: str) -> str | None:
    """The value of the first parameter called `name` (None when absent or valueless)."""
    name = name.lower()
    for key, value in params:
        if key == name:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    """Whether a parameter called `name` is present, with or without a value."""
    name = name.lower()
    return any(key == name for key, _ in params)


def set_param(params: Params, name: str, value: str | None = None) -> Params:
    """`params` with `name` set to `value`: replaced in place if present, else appended."""
    name = name.lower()
    if not has_param(params, name):
        return (*params, (name, value))
    return tuple((key, value if key == name else old) for key, old in params)


def drop_param(params: Params, name: str) -> Params:
    """`params` without any parameter called `name`."""
    name = name.lower()
    return tuple(item for item in params if item[0] != name)


def format_params(params: Params) -> str:
    """`;name=value...` as written on the wire."""
    return "".join(f";{key}" if value is None else f";{key}={value}" for key, value in params)


def format_host(host: str) -> str:
    """A host for a URI or Via: an IPv6 address goes in brackets (RFC 3261 §25.1 IPv6reference)."""
    return f"[{host}]" if ":" in host else host


def valid_host(host: str) -> bool:
    """Whether `host` (an IPv6 address without brackets) is a hostname, IPv4 or IPv6 address."""
    if ":" in host:
        if _IPV6_CHARS.fullmatch(host) is None:
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    m = _IPV4.fullmatch(host)
    if m is not None:
        return all(int(octet) <= 255 for octet in m.groups())
    return _HOSTNAME.fullmatch(host) is not None


def parse_hostport(text: str) -> tuple[str, int | None]:
    """`host[:port]`, with an IPv6 reference in brackets; the host comes back without them."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise SipParseError(f"not an IPv6 address in brackets: {text!r}")
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    if not valid_host(host):
        raise SipParseError(f"bad host {text!r}")
    if not rest:
        return host, None
    if rest[0] != ":" or _PORT.fullmatch(rest, 1) is None or int(rest[1:]) > 65535:
        raise SipParseError(f"bad port in {text!r}")
    return host, int(rest[1:])


def _uri_params(text: str) -> Params:
    """URI parameters (after the first `;`): names unescaped and lower-cased, values as written."""
    out: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if _PARAMCHARS.fullmatch(name) is None or (eq and _PARAMCHARS.fullmatch(value) is None):
            raise SipParseError(f"bad URI parameter {item!r}")
        if "%" in name:
            name = unquote(name, errors="surrogateescape")
        out.append((name.lower(), value if eq else None))
    return tuple(out)


def _uri_param_text(params: Params) -> str:
    parts = []
    for name, value in params:
        if _PARAM_PLAIN.fullmatch(name) is None:
            name = quote(name, safe="-_.!~*'()[]/:&+$", errors="surrogateescape")
        parts.append(f";{name}" if value is None else f";{name}={value}")
    return "".join(parts)


def _normalize_escapes(text: str) -> str:
    """`text` with escapes of unreserved characters decoded and the others in upper case (RFC 3261 §19.1.4:
    only those are equivalent to their encoding)."""
    if "%" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED_SET else "%" + m.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(one, text)


@dataclass(frozen=True, slots=True, kw_only=True)
class SipUri:
    """A `sip:` or `sips:` URI (RFC 3261 §19.1.1). `user`, `password`, parameter values and `headers` are as
    written (still escaped); `host` has no brackets."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """The value of URI parameter `name` (None when absent or valueless)."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether URI parameter `name` is present (`lr` has no value)."""
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """A copy with parameter `name` set (replaced or appended)."""
        return replace(self, params=set_param(self.params, name, value))

    def without_param(self, name: str) -> SipUri:
        """A copy without parameter `name`."""
        return replace(self, params=drop_param(self.params, name))

    @property
    def transport(self) -> str | None:
        """The `transport` parameter in lower case (RFC 3261 §19.1.1), or None."""
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """Whether the URI has `lr`: the next hop is a loose router (RFC 3261 §16.12)."""
        return self.has_param("lr")

    @property
    def maddr(self) -> str | None:
        """The `maddr` parameter, or None."""
        return self.param("maddr")

    @property
    def hostport(self) -> str:
        """`host[:port]` as it goes in a URI or Via."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def equivalent(self, other: object) -> bool:
        """URI equality by RFC 3261 §19.1.4: userinfo case-sensitive, host case-insensitive, escapes of
        unreserved characters equal to the characters, parameters present in only one URI ignored except
        user, ttl, method, maddr and transport; URI headers never ignored."""
        if not isinstance(other, SipUri) or self.scheme != other.scheme or self.port != other.port:
            return False
        if not _same_userinfo(self.user, other.user) or not _same_userinfo(self.password, other.password):
            return False
        if not _same_host(self.host, other.host):
            return False
        mine_params = {name: _norm_value(value) for name, value in reversed(self.params)}
        their_params = {name: _norm_value(value) for name, value in reversed(other.params)}
        for name in mine_params.keys() & their_params.keys():
            if mine_params[name] != their_params[name]:
                return False
        for name in _MUST_MATCH:
            if (name in mine_params) != (name in their_params):
                return False
        return _norm_headers(self.headers) == _norm_headers(other.headers)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.hostport)
        if self.params:
            out.append(_uri_param_text(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{name}={value}" for name, value in self.headers))
        return "".join(out)


def _same_userinfo(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return _normalize_escapes(a) == _normalize_escapes(b)


def _same_host(a: str, b: str) -> bool:
    if a.lower() == b.lower():
        return True
    if ":" in a and ":" in b:
        try:
            return ipaddress.IPv6Address(a) == ipaddress.IPv6Address(b)
        except ValueError:
            return False
    return False


def _norm_value(value: str | None) -> str | None:
    return None if value is None else _normalize_escapes(value).lower()


def _norm_headers(headers: tuple[tuple[str, str], ...]) -> set[tuple[str, str]]:
    return {(_normalize_escapes(name).lower(), _normalize_escapes(value)) for name, value in headers}


@dataclass(frozen=True, slots=True, kw_only=True)
class TelUri:
    """A `tel:` URI (RFC 3966): the number as written (global `+...` or local) and its parameters."""

    number: str
    params: Params = ()

    @property
    def scheme(self) -> str:
        """Always `tel`."""
        return "tel"

    def param(self, name: str) -> str | None:
        """The value of parameter `name` (`phone-context`, `ext`, `isub`...), or None."""
        return param_value(self.params, name)

    def equivalent(self, other: object) -> bool:
        """Equality by RFC 3966 §4: visual separators ignored, case-insensitive, parameters in any order."""
        if not isinstance(other, TelUri):
            return False
        return _tel_key(self) == _tel_key(other)

    def __str__(self) -> str:
        return f"tel:{self.number}{_uri_param_text(self.params)}"


def _tel_key(uri: TelUri) -> tuple[str, frozenset[tuple[str, str | None]]]:
    number = uri.number.translate(_VISUAL_SEPARATORS).lower()
    return number, frozenset((name, _norm_value(value)) for name, value in uri.params)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other URI (RFC 2396 absoluteURI), kept as opaque text: `http:`, `urn:`, `isbn:`... A request may
    carry one as its Request-URI (answered 416 later, RFC 3261 §8.2.2.1) and a name-addr may hold one."""

    text: str

    @property
    def scheme(self) -> str:
        """The scheme, lower-cased."""
        return self.text.partition(":")[0].lower()

    def equivalent(self, other: object) -> bool:
        """Same scheme (any case) and the same text after it: the meaning of the rest is the scheme's."""
        return isinstance(other, AbsoluteUri) and (self.scheme, self.text.partition(":")[2]) == (
            other.scheme,
            other.text.partition(":")[2],
        )

    def __str__(self) -> str:
        return self.text


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """A URI from its text (no surrounding blanks or angle brackets allowed)."""
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME.fullmatch(scheme) is None or not rest:
        raise SipParseError(f"not a URI: {text[:80]!r}")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        number, _, param_text = rest.partition(";")
        if _TEL_NUMBER.fullmatch(number) is None or not any(c.isalnum() or c in "*#" for c in number):
            raise SipParseError(f"bad tel number {number[:80]!r}")
        return TelUri(number=number, params=_uri_params(param_text) if param_text else ())
    if _URIC.fullmatch(rest) is None:
        raise SipParseError(f"bad characters in URI {text[:80]!r}")
    return AbsoluteUri(text)


def _parse_sip(scheme: str, rest: str) -> SipUri:
    # '@' is in no part of a SIP URI after the userinfo (RFC 3261 §25.1), so the first one ends it even
    # when the user has ';' and '?' in it (RFC 4475 §3.1.1.2, §3.1.1.9).
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if _USER.fullmatch(user) is None:
            raise SipParseError(f"bad user part {user[:80]!r}")
        if colon:
            if _PASSWORD.fullmatch(pw) is None:
                raise SipParseError("bad password part")
            password = pw
    headers: tuple[tuple[str, str], ...] = ()
    rest, question, header_text = rest.partition("?")
    if question:
        headers = _uri_headers(header_text)
    hostport, semi, param_text = rest.partition(";")
    host, port = parse_hostport(hostport)
    params = _uri_params(param_text) if semi else ()
    return SipUri(
        scheme=scheme, user=user, password=password, host=host, port=port, params=params, headers=headers
    )


def _uri_headers(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or _HNAME.fullmatch(name) is None or _HVALUE.fullmatch(value) is None:
            raise SipParseError(f"bad URI header {item[:80]!r}")
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr:
    """A From, To, Contact, Route or Record-Route value (RFC 3261 §20.10): optional display name (unquoted),
    the URI, and the header parameters after it (`tag`, `expires`, `q`, ...; values as written)."""

    uri: Uri
    display: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        """The value of header parameter `name` (None when absent or valueless)."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether header parameter `name` is present."""
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """A copy with header parameter `name` set (replaced or appended)."""
        return replace(self, params=set_param(self.params, name, value))

    @property
    def tag(self) -> str | None:
        """The `tag` parameter of From/To (RFC 3261 §19.3), or None."""
        return self.param("tag")

    @property
    def expires(self) -> int | None:
        """A Contact's `expires` in seconds, None when absent or not a number; values past 2**32-1 are
        clamped (RFC 4475 §3.1.2.4 lets an element treat an overlarge one as a long expiry)."""
        value = self.param("expires")
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        digits = value.lstrip("0")
        return 0xFFFFFFFF if len(digits) > 10 else min(int(digits or "0"), 0xFFFFFFFF)

    @property
    def q(self) -> float | None:
        """A Contact's `q` preference (RFC 3261 §20.10 qvalue, 0 to 1), None when absent or invalid."""
        value = self.param("q")
        if value is None or _QVALUE.fullmatch(value) is None:
            return None
        return float(value)

    def __str__(self) -> str:
        # Always in angle brackets: required when the URI has ',', ';' or '?' (RFC 3261 §20) and never wrong.
        head = f"<{self.uri}>" if self.display is None else f"{quote_string(self.display)} <{self.uri}>"
        return head + format_params(self.params)


def parse_name_addr(text: str, *, bare: bool = True) -> NameAddr:
    """A name-addr (`"Name" <uri>;params`) or, when `bare`, an addr-spec (`uri;params`; the parameters of a
    bare URI are header parameters, RFC 3261 §20.10). Route and Record-Route allow only name-addr."""
    pos = skip_lws(text, 0)
    display: str | None = None
    bracketed = True
    if text.startswith('"', pos):
        m = _QUOTED.match(text, pos)
        if m is None:
            raise SipParseError(f"unterminated quoted display name in {text[:80]!r}")
        display = unquote_string(m.group())
        pos = skip_lws(text, m.end())
        if not text.startswith("<", pos):
            raise SipParseError(f"a display name must be followed by <URI>: {text[:80]!r}")
        pos += 1
    else:
        m = _DISPLAY_TOKENS.match(text, pos)
        if m is not None:
            display = m.group(1)
            pos = m.end()
        elif bare:
            bracketed = False
        else:
            raise SipParseError(f"expected <URI> in {text[:80]!r}")
    if bracketed:
        close = text.find(">", pos)
        if close < 0:
            raise SipParseError(f"unterminated <URI> in {text[:80]!r}")
        uri = parse_uri(text[pos:close])
        pos = close + 1
    else:
        m = _BARE_ADDR.match(text, pos)
        if m is None:
            raise SipParseError(f"no URI in {text[:80]!r}")
        if "?" in m.group():
            # RFC 3261 §20: a URI with ',', ';' or '?' must be in angle brackets (RFC 4475 §3.1.2.13).
            raise SipParseError(f"a URI with headers must be enclosed in <>: {text[:80]!r}")
        try:
            uri = parse_uri(m.group())
        except SipParseError as e:
            raise SipParseError(f"not an address: {text[:80]!r} ({e.reason})") from None
        pos = m.end()
    params, pos = parse_params(text, pos)
    if skip_lws(text, pos) != len(text):
        raise SipParseError(f"unexpected text after the address in {text[:80]!r}")
    return NameAddr(uri=uri, display=display, params=params)
