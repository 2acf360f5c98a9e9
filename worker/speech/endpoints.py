"""Where a speech provider is reached: the `endpoint` override of an option, as a WebSocket address."""

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
