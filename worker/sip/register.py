"""Registrations with a PBX (RFC 3261 §10): keep an address-of-record bound to this server's SIP port.

`SIP_REGISTER` is a JSON list (or `@path` of a JSON file) of accounts:
`{"server": "sip:pbx.example.com", "username": "bot", "password": "…", "realm": "…", "expires": 300}`.
The Contact is the shared `SIP_PORT`, so the INVITEs the PBX routes here reach whichever media process the
kernel picks. Each registration is refreshed at half its granted expiry, challenges are answered, and a
failure is retried every 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.tasks import TaskSet
from worker.sip.agent import SipAgent
from worker.sip.dialog import new_call_id, new_tag, target_of, uri_of
from worker.sip.digest import DigestState
from worker.sip.message import Headers, Request, Response
from worker.sip.uri import quote_string

log = logging.getLogger("pbx.worker.sip.register")

RETRY_AFTER = 30.0
MIN_REFRESH = 5.0


@dataclass(slots=True)
class Account:
    server: str
    username: str
    password: str = field(repr=False, default="")
    realm: str | None = None
    expires: int = 300
    display_name: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Account:
        server = str(d.get("server") or "")
        username = str(d.get("username") or "")
        if not server or not username:
            raise ValueError("SIP_REGISTER: each account needs server and username")
        if not server.startswith(("sip:", "sips:")):
            server = f"sip:{server}"
        credential = d.get("credential") or {}  # RustPBX's nested form
        display_name = d.get("display_name")
        if display_name is not None:
            display_name = str(display_name)
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in display_name):
                raise ValueError("SIP_REGISTER: display_name must not hold control characters")
        return cls(
            server=server,
            username=username,
            password=str(d.get("password") or credential.get("password") or ""),
            realm=d.get("realm") or credential.get("realm"),
            expires=int(d.get("expires") or 300),
            display_name=display_name or None,
        )


def load_accounts(spec: str) -> list[Account]:
    if not spec.strip():
        return []
    text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
    data = json.loads(text)
    if isinstance(data, dict):
        data = [data]
    return [Account.from_dict(d) for d in data if not (isinstance(d, dict) and d.get("disabled"))]


class Registration:
    def __init__(self, agent: SipAgent, account: Account) -> None:
        self.agent = agent
        self.account = account
        self.auth = DigestState(account.username, account.password)
        self.call_id = new_call_id(agent.address)
        self.tag = new_tag()
        self.cseq = 0
        self.registered = asyncio.Event()
        self.granted = 0
        self.last_status = 0
        self.contact = ""

    async def register_once(self, expires: int | None = None) -> Response:
        """One REGISTER (retried once per fresh challenge); the final response."""
        account = self.account
        server = uri_of(account.server)
        target = target_of(server)
        if target is None:
            raise ValueError(f"SIP_REGISTER: {account.server!r} is not a sip: URI")
        target = await self.agent.resolve(target)
        host = getattr(server, "host", "")
        # The account's address of record, under its display name when it has one (From and To alike).
        aor = f"<sip:{account.username}@{host}>"
        if account.display_name:
            aor = f"{quote_string(account.display_name)} {aor}"
        expires = account.expires if expires is None else expires
        port = self.agent.transport.shared_port or self.agent.port
        contact = f"<sip:{account.username}@{self.agent.address}:{port}>"
        self.contact = contact
        for _attempt in range(3):
            self.cseq += 1
            h = Headers()
            h.add("From", f"{aor};tag={self.tag}")
            h.add("To", aor)
            h.add("Call-ID", self.call_id)
            h.add("CSeq", f"{self.cseq} REGISTER")
            h.add("Contact", contact)
            h.add("Expires", str(expires))
            request = Request("REGISTER", server, h)
            for name, value in self.auth.authorize("REGISTER", str(server)):
                request.headers.add(name, value)
            response = await self.agent.send_request(request, target).final
            min_expires = (response.headers.get("Min-Expires") or "").strip()
            if response.status == 423 and min_expires.isdigit() and int(min_expires) > expires:
                expires = int(min_expires)  # Interval Too Brief (§10.2.8): ask again for what it allows
                continue
            if response.status in (401, 407):
                name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
                try:
                    if self.auth.on_challenge(response.status, response.headers.get_all(name)):
                        continue
                except ValueError:
                    pass
            return response
        return response

    async def run(self) -> None:
        while True:
            try:
                response = await self.register_once()
            except (OSError, ValueError) as exc:
                log.warning("registration of %s failed: %s", self.account.username, exc)
                await asyncio.sleep(RETRY_AFTER)
                continue
            self.last_status = response.status
            if 200 <= response.status < 300:
                self.granted = _granted(response, self.account.expires, self.contact)
                self.registered.set()
                log.info(
                    "registered %s at %s for %d s", self.account.username, self.account.server, self.granted
                )
                await asyncio.sleep(max(MIN_REFRESH, self.granted / 2))
            else:
                self.registered.clear()
                log.warning(
                    "registration of %s refused: %d %s",
                    self.account.username,
                    response.status,
                    response.reason,
                )
                await asyncio.sleep(RETRY_AFTER)


def _granted(response: Response, asked: int, ours: str = "") -> int:
    # §10.2.4: the 200 lists every binding of the address-of-record; ours is the one that counts.
    mine = uri_of(ours) if ours else None
    for contact in response.contacts:
        if mine is not None and not contact.uri.equivalent(mine):
            continue
        if contact.expires is not None:
            return contact.expires
    value = response.headers.get("Expires")
    if value and value.strip().isdigit():
        return int(value.strip())
    return asked


class Registrations:
    """Every configured account, kept registered while the process runs; unregistered on close."""

    def __init__(self, agent: SipAgent, spec: str) -> None:
        self.agent = agent
        try:
            self.accounts = load_accounts(spec)
        except (OSError, ValueError) as exc:
            log.error("SIP_REGISTER is unusable (%s); no registrations", type(exc).__name__)
            self.accounts = []
        self.items = [Registration(agent, a) for a in self.accounts]
        self._tasks = TaskSet(log, "register:")

    def destinations(self) -> list[tuple[str, int]]:
        """(host, port) of every account's server: the operator's own, so a client may dial them too."""
        found: list[tuple[str, int]] = []
        for account in self.accounts:
            try:
                target = target_of(uri_of(account.server))
            except ValueError:
                continue
            if target is not None:
                found.append((target.host, target.port))
        return found

    def start(self) -> None:
        for reg in self.items:
            self._tasks.spawn(reg.run(), reg.account.username)

    async def close(self) -> None:
        self._tasks.cancel()
        for reg in self.items:
            if reg.registered.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reg.register_once(expires=0), 2)
