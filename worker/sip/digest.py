"""Digest access authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616): pure functions, no I/O.

Client side: `parse_challenge` reads a WWW-Authenticate (401) or Proxy-Authenticate (407) value, `answer`
computes the Authorization / Proxy-Authorization value for one request, and `DigestState` keeps the
challenges of a registration or dialog so that later requests reuse them with an increasing nonce count
and a stale nonce is retried without treating the password as wrong. Server side: `make_challenge` and
`verify`.

Algorithms: MD5, MD5-sess, SHA-256, SHA-256-sess; qop auth and auth-int, or none (the RFC 2069 form many
PBXes still send). Not done: SHA-512-256 (hashlib does not offer it everywhere), userhash and `username*`
(RFC 7616 §3.4.4: no SIP server we target asks for them), Basic (RFC 3261 §22.1 forbids it).

Passwords only ever enter a hash: they are kept out of every `repr`, exception message and log line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Canonical spellings (RFC 7616 §6.1) by lower-cased name; the value is the hashlib name.
_ALGORITHMS = {
    "md5": ("MD5", "md5"),
    "md5-sess": ("MD5-sess", "md5"),
    "sha-256": ("SHA-256", "sha256"),
    "sha-256-sess": ("SHA-256-sess", "sha256"),
}
QOPS = ("auth", "auth-int")

# auth-param = token BWS "=" BWS ( token / quoted-string ) (RFC 7235 §2.1). Unquoted values are let
# through up to the next comma or blank because servers send base64 nonces (with "/" and "=") unquoted.
# Any whitespace counts as a blank, so a value still folded over lines (RFC 3261 §7.3.1) reads the same.
_SCHEME = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)")
_PARAM = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]+)\s*")
_COMMA = re.compile(r"\s*,")
_END = re.compile(r"\s*\Z")
_QUOTED_PAIR = re.compile(r"\\(.)")
_NC = re.compile(r"[0-9A-Fa-f]{8}")


def header_names(status: int) -> tuple[str, str]:
    """(challenge header, credentials header) for a 401 or a 407 (RFC 3261 §22.2, §22.3)."""
    if status == 401:
        return "WWW-Authenticate", "Authorization"
    if status == 407:
        return "Proxy-Authenticate", "Proxy-Authorization"
    raise ValueError(f"status {status} carries no authentication challenge (only 401 and 407 do)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One Digest challenge. `algorithm` is in its canonical spelling (`MD5`, `SHA-256-sess`, ...); `qop`
    holds the lower-cased options offered, empty for an RFC 2069 challenge; `domain` the URIs listed."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: tuple[str, ...] = ()
    scheme: str = "Digest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """The parameters of an Authorization / Proxy-Authorization value, as a server reads them. `nc` is
    the nonce count as an integer (None without qop)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_params(header_value: str, what: str) -> dict[str, str]:
    """The scheme-checked auth-params of `header_value`, names lower-cased, values unquoted."""
    m = _SCHEME.match(header_value)
    if m is None or m.group(1).lower() != "digest":
        scheme = m.group(1) if m else header_value.strip()[:20]
        raise ValueError(f"{what}: scheme {scheme!r} is not Digest")
    pos = m.end()
    if pos < len(header_value) and not header_value[pos].isspace():
        raise ValueError(f"{what}: no blank after the scheme")
    params: dict[str, str] = {}
    while True:
        # RFC 7230 §7 lets a list carry empty elements: "a=1, , b=2" is a=1, b=2.
        while (c := _COMMA.match(header_value, pos)) is not None:
            pos = c.end()
        if _END.match(header_value, pos):
            break
        p = _PARAM.match(header_value, pos)
        if p is None:
            raise ValueError(
                f"{what}: cannot read a name=value parameter at {header_value[pos : pos + 20]!r}"
            )
        name = p.group(1).lower()
        if name in params:
            raise ValueError(f"{what}: parameter {name!r} appears twice")
        params[name] = _unquote(p.group(2))
        pos = p.end()
        c = _COMMA.match(header_value, pos)
        if c is None:
            if _END.match(header_value, pos):
                break
            raise ValueError(f"{what}: expected ',' before {header_value[pos : pos + 20]!r}")
        pos = c.end()
    return params


def _algorithm(value: str | None, what: str) -> str:
    if value is None:
        return "MD5"  # RFC 2617 §3.2.1: absent means MD5
    known = _ALGORITHMS.get(value.lower())
    if known is None:
        raise ValueError(f"{what}: unsupported digest algorithm {value!r}")
    return known[0]


def parse_challenge(header_value: str) -> Challenge:
    """The Digest challenge in a WWW-Authenticate or Proxy-Authenticate value; `ValueError` if it is not
    one, lacks realm or nonce, or asks for an algorithm this module cannot compute."""
    params = _parse_params(header_value, "challenge")
    for required in ("realm", "nonce"):
        if required not in params:
            raise ValueError(f"challenge: no {required} parameter")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm=_algorithm(params.get("algorithm"), "challenge"),
        qop=qop,
        stale=params.get("stale", "").lower() == "true",
        domain=tuple(params.get("domain", "").split()),
    )


def _usable(header_value: str) -> Challenge:
    challenge = parse_challenge(header_value)
    choose_qop(challenge)  # a challenge offering only unknown qop options cannot be answered
    return challenge


def pick_challenge(header_values: Iterable[str]) -> Challenge:
    """The first usable Digest challenge among the values of one response: RFC 7616 §3.7 has the server
    list its preferred algorithm first and the client take the first it supports. `ValueError` (naming
    why each was skipped) when none is usable."""
    reasons: list[str] = []
    for value in header_values:
        try:
            return _usable(value)
        except ValueError as exc:
            reasons.append(str(exc))
    raise ValueError("no usable Digest challenge" + (f" ({'; '.join(reasons)})" if reasons else ""))


def parse_credentials(header_value: str) -> Credentials:
    """The parameters of an Authorization / Proxy-Authorization value; `ValueError` if one that the
    response depends on is missing or malformed."""
    params = _parse_params(header_value, "credentials")
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise ValueError(f"credentials: no {required} parameter")
    qop = params.get("qop")
    nc: int | None = None
    if qop is not None:
        qop = qop.lower()
        # RFC 2617 §3.2.2: with qop, cnonce and an 8-hex-digit nc are mandatory.
        if "cnonce" not in params or "nc" not in params or not _NC.fullmatch(params["nc"]):
            raise ValueError("credentials: qop given without cnonce or an 8-digit hex nc")
        nc = int(params["nc"], 16)
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=_algorithm(params.get("algorithm"), "credentials"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
        qop=qop,
        nc=nc,
    )


def _response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str | None,
    body: bytes,
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (RFC 2617 §3.2.2.1 for MD5; RFC 2069 without qop)."""
    hash_name = _ALGORITHMS[algorithm.lower()][1]

    def h(data: str | bytes) -> str:
        # Header text holds the octets UTF-8 could not decode as surrogates (message.parse decodes with
        # surrogateescape): hash the octets the peer sent, not a failure to encode them.
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        return hashlib.new(hash_name, raw).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        # §3.4.2: the session key binds HA1 to the nonce pair, so a server can cache it per nonce.
        ha1 = h(f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = h(f"{method}:{uri}:{h(body)}") if qop == "auth-int" else h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def choose_qop(challenge: Challenge) -> str | None:
    """The qop to answer with: `auth` when offered (cheaper, and it does not break when a proxy rewrites
    the body), `auth-int` when it is the only option, None for an RFC 2069 challenge. `ValueError` if
    only unknown options are offered."""
    if not challenge.qop:
        return None
    for qop in QOPS:
        if qop in challenge.qop:
            return qop
    raise ValueError(f"challenge offers only unsupported qop values {', '.join(challenge.qop)}")


def answer(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    body: bytes = b"",
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """The Authorization / Proxy-Authorization value answering `challenge` for one request.

    `uri` is the Request-URI as sent (RFC 3261 §22.4), `body` the message body (hashed for auth-int),
    `nc` how many requests have used this nonce including this one. A random cnonce is drawn unless one
    is given (tests give one to reproduce the RFC examples)."""
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError(f"nonce count {nc} out of range 1..0xFFFFFFFF")
    qop = choose_qop(challenge)
    sess = challenge.algorithm.endswith("-sess")
    if cnonce is None and (qop is not None or sess):
        cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = _response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    # A -sess HA1 needs the cnonce even without qop (RFC 2617 §3.2.2.2), so it is sent then as well.
    if cnonce is not None and (qop is not None or sess):
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")  # RFC 2617 §3.2.2: returned unchanged
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}"]
    return "Digest " + ", ".join(parts)


def make_challenge(
    realm: str,
    nonce: str | None = None,
    *,
    opaque: str | None = None,
    algorithm: str = "MD5",
    qop: Iterable[str] = ("auth",),
    stale: bool = False,
) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value (server side, and for tests). A random nonce is drawn
    unless one is given; the server must remember it to judge freshness, which `verify` does not."""
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce or secrets.token_hex(16))}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    parts.append(f"algorithm={_algorithm(algorithm, 'challenge')}")
    qops = ",".join(qop)
    if qops:
        parts.append(f"qop={_quote(qops)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def verify(
    authorization_header: str,
    method: str,
    password_lookup: Callable[[str, str], str | None],
    body: bytes = b"",
) -> bool:
    """Whether an Authorization / Proxy-Authorization value carries the right response for `method`.

    `password_lookup(username, realm)` gives the password, or None for an unknown user. Malformed values
    and unknown users are False, never an exception. The caller still checks what only it knows: that the
    nonce is one it issued and still fresh, that `uri` is the Request-URI, that `nc` went up."""
    try:
        creds = parse_credentials(authorization_header)
    except ValueError:
        return False
    password = password_lookup(creds.username, creds.realm)
    if password is None:
        return False
    if creds.qop is not None and creds.qop not in QOPS:
        return False
    try:
        expected = _response(
            algorithm=creds.algorithm,
            username=creds.username,
            realm=creds.realm,
            password=password,
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=creds.qop,
            nc=f"{creds.nc or 0:08x}",
            cnonce=creds.cnonce,
            body=body,
        )
    except UnicodeEncodeError:  # text no octets could have given (a lone surrogate from elsewhere)
        return False
    # compare_digest refuses non-ASCII text; a response that is not hex digits is wrong anyway.
    return creds.response.isascii() and hmac.compare_digest(expected, creds.response)


@dataclass(slots=True)
class _Entry:
    header: str  # the credentials header this challenge is answered in
    challenge: Challenge
    nc: int = 0  # requests sent with challenge.nonce so far


@dataclass(slots=True)
class DigestState:
    """The challenges one account has met on one registration or dialog, answered on every later request.

    Requests through one state are sent one at a time (a REGISTER refresh, then its retry; or the INVITE,
    then in-dialog requests). The loop:

        headers = state.authorize(method, uri, body)      # [] until the first challenge
        ... send; on 401/407: if state.on_challenge(status, values): resend with a new authorize()

    Each (header, realm) keeps its latest challenge; `authorize` raises the nonce count on each use
    (RFC 2617 §3.2.2: nc counts the requests sent with that nonce) so a server that allows nonce reuse is
    not challenged again on every request."""

    username: str
    password: str = field(repr=False)
    _entries: dict[tuple[str, str], _Entry] = field(default_factory=dict, init=False, repr=False)

    def on_challenge(self, status: int, header_values: Iterable[str]) -> bool:
        """Record the challenge of a 401 / 407 (the values of its WWW-/Proxy-Authenticate headers); whether
        to resend the request with fresh credentials.

        False when the password was rejected: the server challenged again, not stale, right after we
        answered a nonce it had just given us (RFC 3261 §22.2: do not re-attempt with credentials that
        have just been rejected). A `stale=true` challenge is always retried (RFC 2617 §3.2.1: the nonce
        expired, the password was right), and so is a new challenge after a reused nonce, since some
        servers expire nonces without saying stale. `ValueError` if no value is a usable Digest
        challenge."""
        _, credentials_header = header_names(status)
        # RFC 3261 §22.3: a forking proxy chain can challenge for several realms at once; each is answered,
        # with the first usable challenge of each realm (RFC 7616 §3.7 preference order).
        by_realm: dict[str, Challenge] = {}
        reasons: list[str] = []
        for value in header_values:
            try:
                challenge = _usable(value)
            except ValueError as exc:
                reasons.append(str(exc))
                continue
            by_realm.setdefault(challenge.realm, challenge)
        if not by_realm:
            raise ValueError(
                f"{status} without a usable Digest challenge" + "".join(f"; {r}" for r in reasons)
            )
        retry = True
        for realm, challenge in by_realm.items():
            key = (credentials_header, realm)
            previous = self._entries.get(key)
            if previous is not None and previous.nc == 1 and not challenge.stale:
                retry = False
            self._entries[key] = _Entry(credentials_header, challenge)
        return retry

    def authorize(self, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """(header name, value) pairs answering every remembered challenge for this request."""
        out: list[tuple[str, str]] = []
        for entry in self._entries.values():
            entry.nc += 1
            out.append(
                (
                    entry.header,
                    answer(entry.challenge, method, uri, self.username, self.password, body, nc=entry.nc),
                )
            )
        return out

    def forget(self) -> None:
        """Drop every remembered challenge (the account changed, or the registration ended)."""
        self._entries.clear()
