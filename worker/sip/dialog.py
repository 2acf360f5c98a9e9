"""SIP dialogs (RFC 3261 §12): the state two user agents share for one call, and its in-dialog requests.

A dialog is identified by Call-ID, local tag and remote tag. It remembers the remote target (the peer's
Contact), the route set (Record-Route, reversed on the UAC side), both CSeq counters, and the URIs of the
two parties. Requests inside it are built here (§12.2.1.1); loose routing only (every proxy seen in 20
years of deployments sets `lr`), so the Request-URI is always the remote target.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from worker.sip.message import Headers, Request, Response
from worker.sip.transaction import Target
from worker.sip.uri import SipParseError, SipUri, Uri, parse_name_addr, parse_uri


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From (UAC) / To (UAS) value, without the tag
    remote_uri: str
    remote_target: Uri
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 1
    remote_seq: int | None = None
    early: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 1xx-with-tag or 2xx response to our INVITE creates (§12.1.2)."""
        contact = response.contacts[0].uri if response.contacts else invite.uri
        routes = list(reversed(response.headers.get_all("Record-Route")))
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_uri=_untagged(invite.headers.get("From") or ""),
            remote_uri=_untagged(invite.headers.get("To") or ""),
            remote_target=contact,
            route_set=routes,
            local_seq=invite.cseq.number,
            early=response.status < 200,
        )

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str) -> Dialog:
        """The dialog our response to an INVITE creates (§12.1.1)."""
        contact = invite.contacts[0].uri if invite.contacts else invite.uri
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_uri=_untagged(invite.headers.get("To") or ""),
            remote_uri=_untagged(invite.headers.get("From") or ""),
            remote_target=contact,
            route_set=list(invite.headers.get_all("Record-Route")),
            local_seq=0,
            remote_seq=invite.cseq.number,
        )

    def update_target(self, message: Request | Response) -> None:
        """A target refresh (re-INVITE, UPDATE, their 2xx) may move the peer's Contact (§12.2)."""
        if message.contacts:
            self.remote_target = message.contacts[0].uri

    def request(
        self, method: str, contact: str, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """A new in-dialog request (§12.2.1.1). The Via is the agent's to add; ACK and CANCEL reuse the
        INVITE's CSeq number and are built by their callers."""
        if method != "ACK":
            self.local_seq += 1
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        headers.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.local_seq} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        headers.add("Contact", contact)
        if content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method, self.remote_target, headers, body)

    def accepts(self, request: Request) -> bool:
        """§12.2.2: a request with a lower CSeq than the last one is out of order (500)."""
        number = request.cseq.number
        if (
            self.remote_seq is not None
            and number < self.remote_seq
            and request.method not in ("ACK", "CANCEL")
        ):
            return False
        if request.method not in ("ACK", "CANCEL"):
            self.remote_seq = number
        return True

    def destination(self) -> Uri:
        """The URI whose host the next request is sent to: the first route, else the remote target."""
        if self.route_set:
            try:
                return parse_name_addr(self.route_set[0], bare=False).uri
            except SipParseError:
                pass
        return self.remote_target


def _untagged(value: str) -> str:
    try:
        addr = parse_name_addr(value)
    except SipParseError:
        return value
    params = tuple(p for p in addr.params if p[0].lower() != "tag")
    return str(type(addr)(uri=addr.uri, display=addr.display, params=params))


def target_of(uri: Uri, default_port: int = 5060) -> Target | None:
    """Where to send a request for `uri` (RFC 3263 without DNS SRV: host, port, transport param)."""
    if not isinstance(uri, SipUri):
        return None
    host = uri.maddr or uri.host
    transport = (uri.transport or "udp").lower()
    return Target(host, uri.port or default_port, "tcp" if transport == "tcp" else "udp")


def uri_of(text: str) -> Uri:
    """A URI from a name-addr (`"Bob" <sip:bob@host>`) or a bare URI."""
    try:
        return parse_name_addr(text).uri
    except SipParseError:
        return parse_uri(text)
