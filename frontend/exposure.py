"""The start-up report: what this deployment leaves open to whoever can reach it, said once when it starts.

gunicorn's master prints it (gunicorn.conf.py `when_ready`), once per start of a web host rather than once per
frontend, and knows the addresses it actually bound. One log record, a heading and one line per item: at
WARNING when anything is open, else at INFO. It names settings, never their values when they are secrets.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from common.config import Settings

log = logging.getLogger("pbx.frontend.exposure")

Bind = tuple[str, int] | str | int


def _where(bind: Bind) -> str:
    if isinstance(bind, tuple):
        host, port = bind
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{bind}" if isinstance(bind, str) else f"fd://{bind}"


def _loopback(bind: Bind) -> bool:
    """Whether only this machine can connect there (a loopback address, or a Unix socket)."""
    if not isinstance(bind, tuple):
        return isinstance(bind, str)
    host = bind[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or '' (every interface)


def report(settings: Settings, binds: Sequence[Bind]) -> tuple[bool, list[str]]:
    """(anything open, the report's lines: a heading, then `OPEN  ...` and `ok    ...` items)."""
    where = ", ".join(_where(b) for b in binds) or "?"
    exposed = [_where(b) for b in binds if not _loopback(b)]
    opened: list[str] = []
    kept: list[str] = []
    if not settings.api_token:
        if exposed:
            opened.append(
                f"no API_TOKEN, and {', '.join(exposed)} is reachable from other machines: anyone who gets "
                "there can place, list and kill calls, read /metrics and /iceservers (TURN credentials) and "
                "use /llm/v1; set API_TOKEN"
            )
        else:
            kept.append("no API_TOKEN, but bound to loopback only: open to this machine's users and programs")
    else:
        kept.append("API_TOKEN set: every route but /health and the playground's files asks for it")
    if settings.openai_api_key:
        if not settings.api_token and settings.lends_llm_key:
            why = "LLM_PROXY_OPEN" if settings.llm_proxy_open else "TRUST_CLIENTS"
            opened.append(f"LLM proxy open ({why}): /llm/v1 adds OPENAI_API_KEY to anyone's requests")
        elif settings.api_token:
            kept.append("LLM proxy: OPENAI_API_KEY is added only to requests that carry API_TOKEN")
        else:
            kept.append(
                "LLM proxy: OPENAI_API_KEY is lent to nobody (no API_TOKEN): requests without a key of their "
                "own get 401; LLM_PROXY_OPEN=1 would lend it to anyone"
            )
    if settings.trust_clients:
        opened.append(
            "TRUST_CLIENTS: every client is trusted as the operator's own (the LLM proxy is open, the URLs "
            "clients send may reach private addresses, and endpoints they name get the server's Tencent "
            "credentials)"
        )
    if settings.allow_private_urls:
        opened.append(
            "ALLOW_PRIVATE_URLS: URLs that clients send (play and the like) may reach private and loopback "
            "addresses of this network"
        )
    elif not settings.trust_clients:
        allowed = (
            f" and {', '.join(settings.allowed_url_hosts)} (ALLOWED_URL_HOSTS)"
            if settings.allowed_url_hosts
            else ""
        )
        kept.append(
            "URLs that clients send (play, mediaPass, provider and EOU endpoints) reach public addresses "
            f"only, the operator's own destinations{allowed} aside"
        )
    if "*" in settings.cors_origins:
        opened.append(
            "CORS_ORIGINS=*: a page on any site may call the HTTP API from its visitors' browsers (with "
            "API_TOKEN only if it has the token); list your apps' origins"
        )
    if settings.calls_per_ip_per_min <= 0:
        opened.append("CALLS_PER_IP_PER_MIN=0: no limit on new calls per client address")
    else:
        kept.append(
            f"new calls: {settings.calls_per_ip_per_min:g} a minute per client address, "
            f"{max(settings.calls_per_ip_burst, 1):g} at once"
            + (" (the API token's holder is not counted)" if settings.api_token else "")
        )
    if any(net.prefixlen == 0 for net in settings.trusted_proxies):
        opened.append(
            "TRUSTED_PROXIES trusts every address: anyone's X-Forwarded-For names the client, so the "
            "per-address limit can be dodged"
        )
    heading = f"start-up report for {where}: " + (
        f"{len(opened)} open to whoever reaches it" if opened else "nothing open"
    )
    lines = [heading, *(f"  OPEN  {line}" for line in opened), *(f"  ok    {line}" for line in kept)]
    return bool(opened), lines


def log_report(settings: Settings, binds: Sequence[Bind]) -> None:
    """Log the report as one record (one write: no other process's line lands inside it)."""
    opened, lines = report(settings, binds)
    log.log(logging.WARNING if opened else logging.INFO, "%s", "\n".join(lines))
