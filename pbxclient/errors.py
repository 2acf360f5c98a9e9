"""The client's exceptions: one root, a few that say what happened."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbxclient.events import Event, Hangup


class PbxClientError(Exception):
    """The root of every error this library raises."""


class ApiError(PbxClientError):
    """An HTTP request (or a WebSocket upgrade) answered with an error status. `error`, `code` and `details`
    are the server's JSON error body (this server's and RustPBX's shape) when it sent one; `body` is the
    parsed body, or its text."""

    def __init__(
        self,
        status: int,
        error: str,
        code: str | None = None,
        details: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.error = error
        self.code = code
        self.details = details
        self.body = body
        super().__init__(f"HTTP {status}: {error}" + (f" ({details})" if details else ""))


class CallNotFound(ApiError):
    """404: no live call has this id."""


class NotSupported(PbxClientError):
    """The server flavor the client was made for has no such route (e.g. `/command` on RustPBX)."""


class CallClosed(PbxClientError):
    """The call's socket closed while the call had not ended: the connection dropped, the server closed it
    without a `hangup` (a takeover by a newer socket, a frontend restarting), or the socket was refused.
    The call itself may still be up (with `option.resume`, `call.reconnect()` picks it up again).
    `code` is the WebSocket close code (1006 when the connection was lost without one)."""

    def __init__(self, call_id: str, code: int | None, reason: str = "") -> None:
        self.call_id = call_id
        self.code = code
        self.reason = reason
        why = f": {reason}" if reason else ""
        super().__init__(f"call {call_id}: socket closed with code {code}{why}")


class CallEnded(PbxClientError):
    """The call ended (its `hangup` came, or this client closed it) before what was awaited happened.
    `hangup` is the call's `hangup` event, when one came."""

    def __init__(self, call_id: str, message: str, hangup: Hangup | None = None) -> None:
        self.call_id = call_id
        self.hangup = hangup
        super().__init__(f"call {call_id}: {message}")


class CallRejected(PbxClientError):
    """A call being set up got `reject` or `hangup` instead of its `answer` (the `error` that says why, if
    any, is among `call.received()` before it). `event` is that event."""

    def __init__(self, call_id: str, event: Event) -> None:
        self.call_id = call_id
        self.event = event
        super().__init__(f"call {call_id} was not answered: {event!r}")
