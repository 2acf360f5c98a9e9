"""Short-lived call tokens: a web page opens one call WebSocket without ever holding `API_TOKEN`.

The page's backend, which holds the API token, asks `POST /call/token` for a token bound to a call id, a call
path or both, valid for a few seconds, and hands it to the page, which connects with `?token=<it>`. A token
opens call sockets (`/call`, `/call/webrtc`, `/call/sip`) and nothing else: not the REST routes, not the LLM
proxy, not `/call/token` (a token cannot mint tokens).

Format: `ct1.<payload>.<signature>`, both parts base64url without padding. The payload is a compact JSON
object `{"exp": <unix seconds>, "id"?: <call id>, "path"?: <call path>}`; the signature is
HMAC-SHA256(key, "ct1." + payload part), over the text as sent. The key is HMAC-SHA256(API_TOKEN,
"pbx call token v1"): every frontend on every host derives it from its settings, so any of them verifies any
other's tokens without sharing state, and a new API_TOKEN voids every token out. The payload is signed, not
hidden: whoever holds a token can read the call id and expiry it names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from common.errors import BadCommand, Unauthorized
from common.protocol import MAX_CALL_ID, valid_call_id

PREFIX = "ct1."
CALL_PATHS = ("/call", "/call/webrtc", "/call/sip")
DEFAULT_TTL = 60
# An hour at most: a token is for a page about to place a call, not a credential to keep.
MAX_TTL = 3600
# Longer than any token this server mints (a 128-character id, the longest path, a 10-digit expiry).
MAX_TOKEN = 512
_KEY_LABEL = b"pbx call token v1"
_FIELDS = ("id", "path", "ttl")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallGrant:
    """What a token lets its holder open: until `expires_at` (unix seconds), the call `call_id` (None: any
    id) on `path` (None: any call path)."""

    expires_at: int
    call_id: str | None = None
    path: str | None = None


class TokenRefused(Unauthorized):
    """A call token that does not open this socket; the message says why, for the 401's JSON error body."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CallTokens:
    """Mints and checks call tokens under the key derived from one API token."""

    def __init__(self, api_token: str, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(api_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
        # Wall-clock time: the frontend that checks a token may be on another host than the one that minted
        # it (their clocks are assumed in step, as NTP keeps them, to within a second or two).
        self._clock = clock

    def __repr__(self) -> str:
        return "CallTokens(key=***)"

    def _sign(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest()

    def mint(self, grant: CallGrant) -> str:
        payload: dict[str, object] = {"exp": grant.expires_at}
        if grant.call_id is not None:
            payload["id"] = grant.call_id
        if grant.path is not None:
            payload["path"] = grant.path
        signed = PREFIX + _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{signed}.{_b64(self._sign(signed))}"

    def grant(self, ttl: int, call_id: str | None = None, path: str | None = None) -> CallGrant:
        return CallGrant(expires_at=int(self._clock()) + ttl, call_id=call_id, path=path)

    def read(self, token: str) -> CallGrant:
        """The grant a token carries, if this server signed it (expired or not); else TokenRefused."""
        signed, _, signature = token.rpartition(".")
        malformed = TokenRefused(
            "invalid call token",
            "not a call token (ct1.<payload>.<signature>, as POST /call/token makes them)",
        )
        if (
            len(token) > MAX_TOKEN
            or not token.isascii()
            or not signed.startswith(PREFIX)
            or "." in signed[len(PREFIX) :]
        ):
            raise malformed
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise malformed from None
        # Checked before the payload is even decoded: nothing unsigned is parsed.
        if not hmac.compare_digest(given, self._sign(signed)):
            raise TokenRefused(
                "invalid call token",
                "its signature does not match: the token was altered, or signed under another API_TOKEN",
            )
        try:
            payload = json.loads(_unb64(signed[len(PREFIX) :]))
            grant = CallGrant(expires_at=payload["exp"], call_id=payload.get("id"), path=payload.get("path"))
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
            # Signed with our key but unreadable: only a bug here could make one.
            raise malformed from None
        return grant

    def check(self, token: str, path: str, call_id: str | None) -> CallGrant:
        """The grant of `token` if it opens the call socket `path` with the query's `call_id`; else
        TokenRefused saying why."""
        grant = self.read(token)
        now = int(self._clock())
        if now >= grant.expires_at:
            raise TokenRefused(
                "call token expired",
                f"it expired at {_when(grant.expires_at)} ({now - grant.expires_at} s ago); ask POST "
                "/call/token for a new one",
            )
        if grant.path is not None and grant.path != path:
            raise TokenRefused("call token not valid here", f"it opens {grant.path}, not {path}")
        if grant.call_id is not None and grant.call_id != call_id:
            raise TokenRefused(
                "call token not valid here",
                f"it opens call id {grant.call_id!r} only: connect with ?id=<that id>"
                if call_id is None
                else f"it opens call id {grant.call_id!r}, not {call_id!r}",
            )
        return grant


def is_call_token(value: str) -> bool:
    return value.startswith(PREFIX)


async def _request_fields(request: web.Request) -> dict[str, object]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadCommand("the body must be a JSON object", 'e.g. {"id": "<call id>", "ttl": 60}') from None
    if not isinstance(body, dict):
        raise BadCommand("the body must be a JSON object", 'e.g. {"id": "<call id>", "ttl": 60}')
    for name in body:
        if name not in _FIELDS:
            raise BadCommand(f"unknown field {name!r}", f"the fields are {', '.join(_FIELDS)}")
    return body


def _grant_asked(tokens: CallTokens, body: dict[str, object]) -> CallGrant:
    call_id, path, ttl = body.get("id"), body.get("path"), body.get("ttl", DEFAULT_TTL)
    if call_id is not None:
        if not isinstance(call_id, str) or not valid_call_id(call_id):
            raise BadCommand(f"id: must be 1 to {MAX_CALL_ID} printable characters without spaces")
    if path is not None and path not in CALL_PATHS:
        raise BadCommand(f"path: must be one of {', '.join(CALL_PATHS)}")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise BadCommand(f"ttl: must be whole seconds from 1 to {MAX_TTL}")
    if call_id is None and path is None:
        # A token that named neither would open any call: it gets a call of its own.
        call_id = f"s.{uuid.uuid4()}"
    assert path is None or isinstance(path, str)
    return tokens.grant(ttl, call_id=call_id, path=path)


def setup(app: web.Application, tokens: CallTokens) -> None:
    """Register `POST /call/token`: `{"id"?, "path"?, "ttl"?}` -> `{"token", "expiresAt", "id", "path"}`."""

    async def mint(request: web.Request) -> web.Response:
        grant = _grant_asked(tokens, await _request_fields(request))
        return web.json_response(
            {
                "token": tokens.mint(grant),
                "expiresAt": grant.expires_at,
                "id": grant.call_id,
                "path": grant.path,
            },
            # A credential: no cache along the way may keep it.
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_post("/call/token", mint)
