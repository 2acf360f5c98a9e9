"""Where a speech provider is reached: the `endpoint` override of an option, as a WebSocket address, and
whether the server's own credentials may go there."""

from __future__ import annotations

from urllib.parse import urlsplit

from common.errors import ProviderRefused

TENCENT_ASR_HOST = "asr.cloud.tencent.com"
TENCENT_TTS_HOST = "tts.cloud.tencent.com"
# The providers' own hosts, which the server reaches whatever their addresses (ports as the URLs have them).
DEFAULT_HOSTS = (f"{TENCENT_ASR_HOST}:443", f"{TENCENT_TTS_HOST}:443")


def split_endpoint(endpoint: str | None, default_host: str, field: str = "endpoint") -> tuple[str, str, str]:
    """(ws scheme, host[:port], path prefix) of an `endpoint` override: a URL, or a bare host for wss.

    `http(s)://` is rewritten to `ws(s)://`, so one setting serves a provider's HTTP and WebSocket APIs.
    """
    if not endpoint:
        return "wss", default_host, ""
    if "://" not in endpoint:
        endpoint = f"wss://{endpoint}"
    parts = urlsplit(endpoint)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ProviderRefused(f"{field}: cannot use {endpoint!r} as a WebSocket address", 400)
    return scheme, parts.netloc, parts.path.rstrip("/")


def is_default_host(endpoint: str | None, default_host: str) -> bool:
    """Whether `endpoint` (absent, a bare host or a URL) is the provider's own host, over TLS on its port:
    the only place the server's credentials go when a client wrote the endpoint."""
    if not endpoint:
        return True
    try:
        scheme, netloc, _prefix = split_endpoint(endpoint, default_host)
    except ProviderRefused:
        return False
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return False
    return scheme == "wss" and parts.hostname == default_host and port in (None, 443) and "@" not in netloc


def custom_endpoint_refusal(field: str, missing: list[str], default_host: str) -> ProviderRefused:
    """The error for a client's endpoint that came without credentials of its own."""
    return ProviderRefused(
        f"{field}: a custom endpoint needs its own {', '.join(missing)} in the option; the server's "
        f"credentials are only sent to {default_host}",
        400,
    )
