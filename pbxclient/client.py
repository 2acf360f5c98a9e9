"""`Client`: the REST routes and the call sockets of one server.

Flavors (`flavor=`), for the routes and behaviours where the servers differ:

| | `"pbx"` (this server) | `"rustpbx"` | `"active-call"` |
|---|---|---|---|
| `list_calls()` | `GET /call/lists` | `GET /call/lists` | `GET /list` |
| `kill()` | `POST /call/kill/{id}` | `POST /call/kill/{id}` | `GET /kill/{id}` |
| `send_command()`, `events()`, `precache()` | served | `NotSupported` | served |
| `pcm` audio from the server | 16 kHz | 8 kHz | 8 kHz |
| `hangup` event on `/call` | always | none: a normal close ends the call | none: same |
| `candidate()` / `refer(target)` | as given | as given | sent as `addIceCandidate` / `callee` |

`/iceservers`, `/call/token` (this server's) and `/health` (RustPBX and this server) are the same path
everywhere they exist.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from pbxclient.call import Call, opening
from pbxclient.commands import Command, command_to_dict
from pbxclient.errors import ApiError, CallNotFound, NotSupported
from pbxclient.options import CallOption, SipOption, SynthesisOption
from pbxclient.sse import EventStream
from pbxclient.wire import to_wire

if TYPE_CHECKING:
    from pbxclient.rtc import RtcPeer, WebRtcCall

Flavor = Literal["pbx", "rustpbx", "active-call"]
FLAVORS = ("pbx", "rustpbx", "active-call")

# Why a WebSocket upgrade was refused, by status (the body of a refused upgrade is not readable).
_UPGRADE_REFUSED = {
    400: "bad query parameter (id, dump, ping, serverSideTrack)",
    401: "an API token is required, or the one given is wrong or expired",
    404: "no such call waits on this path",
    409: "a live call already has this id",
    429: "too many new calls from this address",
    503: "the server cannot take calls now",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """A live call, from `list_calls()`. `call_type` is `websocket`, `webrtc` or `sip` (active-call's
    `webSocket` is read as `websocket`); `created_at` is RustPBX's (its socket's opening), `ring_time` and
    `start_time` (the answer) active-call's; each is None where the server does not say."""

    id: str
    call_type: str
    option: dict[str, Any] | None = None
    created_at: str | None = None
    ring_time: str | None = None
    start_time: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class IceServer:
    """One entry of `/iceservers`, ready for an `RTCPeerConnection`."""

    urls: list[str]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecacheResult:
    """`status` is `cached` (synthesized now) or `exists`; `bytes` the 16 kHz audio's size (0 if it
    existed)."""

    status: str
    cache_key: str
    bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallToken:
    """A short-lived token that opens one call socket (this server's `POST /call/token`)."""

    token: str = field(repr=False)
    expires_at: int
    id: str | None = None
    path: str | None = None


def new_call_id() -> str:
    """An id in active-call's form, `s.<uuid4>`."""
    return f"s.{uuid.uuid4()}"


class Client:
    """A server's API. `base_url` is `http(s)://host:port`; `token` the server's `API_TOKEN`, sent as
    `Authorization: Bearer` on HTTP requests and as `?token=` on call sockets; `flavor` the server's kind
    (see the module's table). Use as `async with Client(...) as client:`, or call `close()`.

    `audio_buffer` is how many seconds of received audio a call keeps for its `audio()` iterators."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        flavor: Flavor = "pbx",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        audio_buffer: float = 60.0,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r} (expected one of {', '.join(FLAVORS)})")
        self.base_url = base_url.rstrip("/")
        self.ws_url = "ws" + self.base_url[4:] if self.base_url.startswith("http") else self.base_url
        self.token = token
        self.flavor: Flavor = flavor
        self.timeout = timeout
        self._audio_frames = max(1, int(audio_buffer * 50))
        self._own_session = session is None
        self._session = session
        self._calls: set[Call] = set()

    # --- plumbing ---------------------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout)
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def close(self) -> None:
        """Close every call socket still open (without hanging up) and the HTTP session."""
        for call in list(self._calls):
            await call.close()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _forget(self, call: Call) -> None:
        self._calls.discard(call)

    def _require(self, what: str, *flavors: str) -> None:
        if self.flavor not in flavors:
            raise NotSupported(f"{what} is not served by {self.flavor} (only by {', '.join(flavors)})")

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {"headers": self._headers()}
        if body is not None:
            kwargs["json"] = body
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self.session.request(method, self.base_url + path, timeout=timeout, **kwargs) as resp:
            text = await resp.text()
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            if resp.status >= 400:
                raise api_error(resp.status, data)
            return data

    async def _connect(self, path: str, params: Mapping[str, str]) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.session.ws_connect(
                self.ws_url + path,
                params=dict(params),
                max_msg_size=4 << 20,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(
                exc.status, _UPGRADE_REFUSED.get(exc.status, exc.message or "WebSocket upgrade refused")
            ) from None

    # --- REST -------------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """`GET /health` (RustPBX and this server)."""
        data: dict[str, Any] = await self._request("GET", "/health")
        return data

    async def list_calls(self) -> list[CallInfo]:
        """The live calls: `GET /call/lists`, or `GET /list` for active-call."""
        if self.flavor == "active-call":
            data = await self._request("GET", "/list")
            return [
                CallInfo(
                    id=str(c.get("id")),
                    call_type=str(c.get("callType", "")).lower(),
                    option=c.get("option", c.get("cs.option")),
                    ring_time=c.get("ringTime"),
                    start_time=c.get("startTime"),
                    raw=c,
                )
                for c in (data or {}).get("active_calls", [])
            ]
        data = await self._request("GET", "/call/lists")
        return [
            CallInfo(
                id=str(c.get("id")),
                call_type=str(c.get("call_type", "")).lower(),
                option=c.get("option"),
                created_at=c.get("created_at"),
                raw=c,
            )
            for c in (data or {}).get("calls", [])
        ]

    async def kill(self, call_id: str) -> bool:
        """End a call from outside its socket: `POST /call/kill/{id}`, or `GET /kill/{id}` for active-call.
        False when no live call has this id (RustPBX itself answers `true` even then)."""
        try:
            if self.flavor == "active-call":
                await self._request("GET", f"/kill/{call_id}")
            else:
                await self._request("POST", f"/call/kill/{call_id}")
        except CallNotFound:
            return False
        return True

    async def send_command(self, call_id: str, command: Command | Mapping[str, Any]) -> None:
        """Run a command on a call as if it came on its socket (`POST /command/{id}`; active-call and this
        server). Raises `CallNotFound`, or `ApiError` (400) for a command the server refuses."""
        self._require("POST /command", "pbx", "active-call")
        body = command_to_dict(command) if isinstance(command, Command) else dict(command)
        await self._request("POST", f"/command/{call_id}", body)

    def events(self, call_id: str, commands: bool = False) -> EventStream:
        """A call's events as Server-Sent Events (`GET /events/{id}`; active-call and this server), typed
        as on the socket; with `commands`, also the commands it runs (`CommandSeen`). Ends with the call.
        Use `async with client.events(id) as stream: async for ev in stream: ...`."""
        self._require("GET /events", "pbx", "active-call")
        return EventStream(self, call_id, commands)

    async def precache(
        self,
        text: str,
        *,
        speaker: str | None = None,
        option: SynthesisOption | None = None,
        cache_key: str | None = None,
    ) -> PrecacheResult:
        """Synthesize `text` into the server's cache (`POST /precache`; active-call and this server), so
        a later `tts` with the same `cache_key` (or text and option) plays at once. active-call needs
        `option`; this server uses its local voice without one."""
        self._require("POST /precache", "pbx", "active-call")
        body = {"command": "tts", "text": text, "speaker": speaker, "option": option, "cacheKey": cache_key}
        data = await self._request(
            "POST", "/precache", to_wire({k: v for k, v in body.items() if v is not None})
        )
        return PrecacheResult(
            status=str(data.get("status")),
            cache_key=str(data.get("cacheKey", data.get("key", ""))),
            bytes=int(data.get("bytes") or 0),
        )

    async def ice_servers(self) -> list[IceServer]:
        """`GET /iceservers`."""
        data = await self._request("GET", "/iceservers") or []
        out = []
        for s in data:
            urls = s.get("urls")
            out.append(
                IceServer(
                    urls=[urls] if isinstance(urls, str) else list(urls or []),
                    username=s.get("username"),
                    credential=s.get("credential"),
                )
            )
        return out

    async def call_token(
        self, call_id: str | None = None, path: str | None = None, ttl: int | None = None
    ) -> CallToken:
        """(this server) A short-lived token for one call socket, for a web page (`POST /call/token`)."""
        self._require("POST /call/token", "pbx")
        body = {k: v for k, v in (("id", call_id), ("path", path), ("ttl", ttl)) if v is not None}
        data = await self._request("POST", "/call/token", body)
        return CallToken(
            token=data["token"], expires_at=int(data["expiresAt"]), id=data.get("id"), path=data.get("path")
        )

    # --- call sockets -----------------------------------------------------------------------------------

    def _params(
        self,
        call_id: str,
        dump: bool | None,
        ping: int | None,
        server_side_track: str | None,
        token: str | None,
    ) -> dict[str, str]:
        params = {"id": call_id}
        if dump is not None:
            params["dump"] = "true" if dump else "false"
        if ping is not None:
            params["ping"] = str(ping)
        if server_side_track is not None:
            params["serverSideTrack"] = server_side_track
        if token or self.token:
            params["token"] = str(token or self.token)
        return params

    @opening
    async def open(
        self,
        path: str = "/call",
        *,
        call_id: str | None = None,
        codec: str = "pcm",
        dump: bool | None = None,
        ping: int | None = None,
        server_side_track: str | None = None,
        token: str | None = None,
    ) -> Call:
        """Open a call socket and send nothing: the building block of the helpers below, and the way to
        pick up a resumable call from another process (`open(path, call_id=<its id>)`). `codec` is what
        the socket's audio will be (`/call` only; say the same in the `invite`). Query: `id`, `dump`,
        `ping` (seconds between WebSocket pings; active-call and this server), `serverSideTrack` (the
        same), `token` (a call token, or the client's token)."""
        call_id = call_id or new_call_id()
        params = self._params(call_id, dump, ping, server_side_track, token)
        call = Call(self, path, call_id, params, codec, self._audio_frames)
        call._start(await self._connect(path, params))
        self._calls.add(call)
        return call

    @opening
    async def call(
        self,
        *,
        codec: str | None = None,
        option: CallOption | None = None,
        call_id: str | None = None,
        dump: bool | None = None,
        ping: int | None = None,
        server_side_track: str | None = None,
        token: str | None = None,
        timeout: float | None = 10.0,
    ) -> Call:
        """A WebSocket call (`/call`), invited and answered: audio travels on the socket in `codec`
        (`pcm`, `pcmu`, `pcma`, `g722`; default `option.codec`, else `pcm`), with `call.send_audio()` and
        `call.audio()`."""
        base = option or CallOption()
        codec = (codec or base.codec or "pcm").lower()
        option = replace(base, codec=codec)
        call = await self.open(
            "/call",
            call_id=call_id,
            codec=codec,
            dump=dump,
            ping=ping,
            server_side_track=server_side_track,
            token=token,
        )
        try:
            await call.invite(option)
            await call._await_answer(timeout)
        except BaseException:
            await call.close()
            raise
        return call

    @opening
    async def webrtc_call(
        self,
        *,
        option: CallOption | None = None,
        peer: RtcPeer | None = None,
        call_id: str | None = None,
        dump: bool | None = None,
        ping: int | None = None,
        server_side_track: str | None = None,
        token: str | None = None,
        timeout: float | None = 20.0,
    ) -> WebRtcCall:
        """A WebRTC call (`/call/webrtc`) through an aiortc peer (`pbxclient.rtc.RtcPeer`, made here when
        not given): the peer's offer goes in the `invite`, the server's answer is applied to it. Audio
        travels on the peer connection: `call.send_audio()` feeds its microphone, `call.audio()` gives what
        it hears (16 kHz)."""
        from pbxclient.rtc import RtcPeer, WebRtcCall

        peer = peer or RtcPeer()
        call_id = call_id or new_call_id()
        params = self._params(call_id, dump, ping, server_side_track, token)
        call = WebRtcCall(self, "/call/webrtc", call_id, params, peer, self._audio_frames)
        try:
            call._start(await self._connect("/call/webrtc", params))
            self._calls.add(call)
            offer = await peer.offer()
            await call.invite(replace(option or CallOption(), offer=offer))
            answer = await call._await_answer(timeout)
            await peer.accept(answer.sdp)
        except BaseException:
            await call.close()
            raise
        return call

    @opening
    async def sip_call(
        self,
        callee: str,
        *,
        caller: str | None = None,
        option: CallOption | None = None,
        sip: SipOption | None = None,
        ring_timeout: str | float | None = None,
        call_id: str | None = None,
        dump: bool | None = None,
        ping: int | None = None,
        server_side_track: str | None = None,
        token: str | None = None,
        wait: bool = True,
        timeout: float | None = 90.0,
    ) -> Call:
        """An outbound SIP call (`/call/sip`) to `callee` (`sip:user@host`). With `wait`, returns once it
        is answered (raises `CallRejected` with the `reject` or `hangup` otherwise); without, at once:
        watch for `Ringing`, `Answer`, `Reject`. `ring_timeout` is this server's."""
        base = option or CallOption()
        option = replace(
            base,
            callee=callee,
            caller=base.caller if caller is None else caller,
            sip=base.sip if sip is None else sip,
            ring_timeout=base.ring_timeout if ring_timeout is None else ring_timeout,
        )
        call = await self.open(
            "/call/sip",
            call_id=call_id,
            dump=dump,
            ping=ping,
            server_side_track=server_side_track,
            token=token,
        )
        try:
            await call.invite(option)
            if wait:
                await call._await_answer(timeout)
        except BaseException:
            await call.close()
            raise
        return call

    @opening
    async def attach(
        self,
        call_id: str,
        *,
        server_side_track: str | None = None,
        dump: bool | None = None,
        ping: int | None = None,
        token: str | None = None,
    ) -> Call:
        """Take an inbound SIP call a webhook announced (`/call/sip?id=<dialogId>`): its first event is
        `Incoming`; then `accept()`, `ringing()` or `reject()`."""
        return await self.open(
            "/call/sip",
            call_id=call_id,
            dump=dump,
            ping=ping,
            server_side_track=server_side_track,
            token=token,
        )


def api_error(status: int, body: Any) -> ApiError:
    """The exception for an HTTP error answer: this server's and RustPBX's `{error, code, details}`,
    active-call's `{status, id}` / `{status, error}`, or a text body."""
    error, code, details = f"HTTP {status}", None, None
    if isinstance(body, dict):
        error = str(body.get("error") or body.get("status") or error)
        code = body.get("code")
        details = body.get("details")
    elif isinstance(body, str) and body:
        error = body[:500]
    cls = CallNotFound if status == 404 else ApiError
    return cls(status, error, str(code) if code is not None else None, details, body)
