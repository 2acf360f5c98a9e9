"""Process settings, read once from the environment (and an optional `.env` file)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from common.redact import redact_url

_SECRET_FIELDS = frozenset(
    {
        "sip_register",
        "openai_api_key",
        "tencent_secret_id",
        "tencent_secret_key",
        "restsend_token",
        "api_token",
    }
)


def _read_dotenv(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; the real environment wins over the file."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _dirs(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A list of directories written as PATH is (`os.pathsep`-separated), each made absolute now."""
    raw = env.get(name, "")
    out: list[str] = []
    for part in raw.split(os.pathsep):
        if part.strip() and os.path.abspath(part.strip()) not in out:
            out.append(os.path.abspath(part.strip()))
    return tuple(out)


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive); unset or empty: the first."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ValueError(f"environment variable {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _bool(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"environment variable {name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(env: dict[str, str], name: str) -> tuple[Network, ...]:
    """A comma-separated list of addresses or networks (`10.0.0.0/8`, `::1`); unset or empty: none."""
    out: list[Network] = []
    for part in (p.strip() for p in env.get(name, "").split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"environment variable {name}: {part!r} is not an address or network") from None
    return tuple(out)


def _allowed_hosts(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of `host` or `host:port` (`[v6]:port`); unset or empty: none."""
    out: list[str] = []
    for part in (p.strip() for p in env.get(name, "").split(",")):
        if not part:
            continue
        parts = urlsplit(f"//{part}")
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if not parts.hostname or not port_ok or parts.path or parts.query or "@" in parts.netloc:
            raise ValueError(f"environment variable {name}: {part!r} is not a host or host:port")
        out.append(part.lower())
    return tuple(out)


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str:
    """`value` as a browser writes it in an `Origin` header (`scheme://host[:port]`, lower case, no default
    port), or ValueError. A trailing `/` is forgiven; a path, query, fragment or user is not an origin."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme) or not parts.netloc or "@" in parts.netloc:
        raise ValueError(f"{value!r} is not an origin (expected scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an origin: it has a path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not an origin: bad port") from None
    host = parts.netloc.lower()
    if port is not None and port == _DEFAULT_PORTS.get(scheme):
        host = host.rsplit(":", 1)[0]
    return f"{scheme}://{host}"


def _origins(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of origins or `*` (any); unset or empty: `*`."""
    raw = env.get(name, "").strip()
    if not raw:
        return ("*",)
    out: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            origin = "*" if part == "*" else normalize_origin(part)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}: {exc}") from None
        if origin not in out:
            out.append(origin)
    if not out:
        raise ValueError(f"environment variable {name} lists no origin (use * for any)")
    return tuple(out)


def _host_name(env: dict[str, str], name: str) -> str:
    """This host's name: the setting, else the machine's host name. It goes into process ids and Redis key
    names, so a set one is only letters, digits, `.`, `_` and `-`."""
    raw = env.get(name, "").strip()
    if not raw:
        return socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", raw):
        raise ValueError(
            f"environment variable {name} must be 1-64 letters, digits, '.', '_' or '-', got {raw!r}"
        )
    return raw


def default_web_concurrency(cores: int) -> int:
    """Frontends per host when WEB_CONCURRENCY is unset: one per two cores (media processes: one per core).

    Measured on 2 cores at 300-400 calls (docs/performance.md): one frontend and two media processes cost
    20-35 % less CPU per call than two of each, with shorter setup and round-trip tails; every process more
    on the same cores adds wake-ups and Redis round trips per frame.
    """
    return max(1, cores // 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a process needs to know about its deployment; see docs/configuration.md."""

    port: int = 8080
    # This host's name, wherever the code means "this host": in process ids, heartbeats (`host`), the
    # dashboard's hosts and `pbx_process_info`, and the host dispatch prefers for a frontend's calls.
    host_name: str = field(default_factory=socket.gethostname)
    worker_processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_calls: int = 200
    # Calls a media process takes before new calls go to the next one (packing, worker/packing.py); the
    # media processes that are not the packing target poll the dispatch stream every `pack_poll_ms`.
    # 0 = no packing: every media process blocks on the stream and new calls spread round-robin.
    pack_calls: int = 50
    pack_poll_ms: float = 50.0
    # Milliseconds a new call is left for a media process of its frontend's host (HOST_NAME) while one has
    # room, before a process of another host takes it (worker/packing.py, leave_for_its_host); 0 = any host.
    dispatch_local_ms: float = 40.0
    redis_url: str = ""
    redis_prefix: str = "pbx:"
    recorder_path: str = "/tmp/recorders"
    media_cache_path: str = "/tmp/mediacache"
    # Directories `play` may read local files from (besides the media cache); empty: the cache only.
    media_path: tuple[str, ...] = ()
    # Megabytes under RECORDER_PATH past which no new recording starts (and dumps stop); 0 = no bound.
    recorder_quota_mb: float = 1024.0
    # Megabytes the media cache (downloaded play URLs, kept syntheses) may hold; 0 = no bound.
    media_cache_max_mb: float = 1024.0
    public_ip: str = ""
    rtp_port_min: int = 12000
    rtp_port_max: int = 42000
    sip_port: int = 25060
    sip_webhook_url: str = ""
    # Address the SIP and RTP sockets bind (PUBLIC_IP, else this, goes into Via, Contact and SDP).
    sip_addr: str = "0.0.0.0"
    # Seconds an inbound call waits for the app's accept/reject before it is turned away.
    sip_accept_timeout: float = 50.0
    # Accounts to keep registered with a PBX: JSON list, or @path of a JSON file (docs/sip.md).
    sip_register: str = ""
    ice_servers: str = ""
    restsend_token: str = ""
    restsend_ice_url: str = "https://restsend.com/api/iceservers"
    # Local addresses WebRTC gathers host candidates on (empty: every interface's).
    rtc_addresses: tuple[str, ...] = ()
    # Seconds without any packet from a WebRTC peer before its call is hung up (ICE consent takes ~30 s).
    rtc_media_timeout: float = 10.0
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    tencent_appid: str = ""
    tencent_secret_id: str = ""
    tencent_secret_key: str = ""
    voiceapi_endpoint: str = ""
    voiceapi_speaker_id: str = ""
    # Direct frontend ⇄ media process sockets for call messages (common/peerlink.py); Redis otherwise.
    media_link: bool = True
    # Address a media process's link listens on and frontends dial (0.0.0.0: the default route's address).
    media_link_host: str = "127.0.0.1"
    # Seconds a media process, on SIGTERM, lets its calls go on before hanging up the rest.
    drain_timeout: float = 30.0
    # Seconds a process heartbeat lives in Redis; liveness is "refreshed within this window".
    heartbeat_ttl: float = 3.0
    # Seconds a new call may wait for a media process before the client is told none is available.
    claim_timeout: float = 10.0
    # Seconds a heartbeat must stay missing (seen on two checks this far apart) before its process's calls
    # are ended: one late write never reaps a call.
    reap_grace: float = 1.0
    # Seconds an event loop may go without running before its process stops writing heartbeats (and is
    # then taken for dead); 0 = heartbeats go on whatever the loop does.
    loop_stall_limit: float = 30.0
    # Load above which a process takes no new call (0 = not used): its event loop's own CPU share, its
    # event-loop lag (90th percentile over a second, ms), a media process's mean media tick (ms). New calls
    # are taken again once every figure is back under `load_resume` times its limit.
    load_loop_busy: float = 0.75
    load_lag_ms: float = 30.0
    load_tick_ms: float = 10.0
    load_resume: float = 0.8
    # Test knobs, never for production: CPU burnt on a media process's event loop per call every 20 ms
    # (microseconds), and the seconds SIGUSR2 blocks a process's event loop for (0 = SIGUSR2 not handled).
    test_tick_burn_us: float = 0.0
    test_stall_seconds: float = 0.0
    # Test knob: seconds a media process's warm-up takes at least (a model thread sleeps them).
    test_warmup_seconds: float = 0.0
    log_level: str = "INFO"
    # When set, every REST and WebSocket endpoint asks for it (`Authorization: Bearer` or `?token=`).
    api_token: str = ""
    # Origins whose pages may call the HTTP API from a browser (CORS); `*` = any, as RustPBX.
    cors_origins: tuple[str, ...] = ("*",)
    # Per call socket: commands (text frames) and audio frames a client may send per second (burst: one
    # second's worth); beyond that they are refused with an `error` event. The pieces of a streamed `tts`
    # reply have a budget of their own (frontend/limits.py, CommandLimit).
    ws_max_commands_per_sec: float = 100.0
    ws_max_tts_pieces_per_sec: float = 5000.0
    ws_max_audio_frames_per_sec: float = 150.0
    # `/llm/v1` adds OPENAI_API_KEY to requests that bring no key of their own only when its callers are
    # known: API_TOKEN is set (every caller had to show it), or the operator opened it with this.
    llm_proxy_open: bool = False
    # The clients are the operator's own (a trusted local use): implies `llm_proxy_open` and
    # `allow_private_urls`, lends the server's provider credentials to endpoints a client names, and lifts the
    # path rules (absolute recorder files, any local play path; the quotas stay).
    trust_clients: bool = False
    # New call sockets one client address may open a minute, and how many it may save up (0 = no limit);
    # shared by every frontend through Redis (frontend/callrate.py).
    calls_per_ip_per_min: float = 300.0
    calls_per_ip_burst: float = 100.0
    # Peers (load balancers, reverse proxies) whose `X-Forwarded-For` is believed (frontend/clientaddr.py).
    trusted_proxies: tuple[Network, ...] = ()
    # Outbound requests a client steers (play URLs, mediaPass, provider and EOU endpoints) may reach
    # private, loopback and link-local addresses (worker/urlguard.py); TRUST_CLIENTS implies it.
    allow_private_urls: bool = False
    # Destinations (`host` or `host:port`) that may be private whoever names them.
    allowed_url_hosts: tuple[str, ...] = ()
    # What the smart_turn EOU model hears (worker/speech/smart_turn.py, WINDOWS): "turn", only the turn
    # (its probability shifted to the 8-s window's scale); "whole", always its own 8-s window; "auto", its
    # 8-s window unless a question waited for the model.
    smart_turn_window: str = "turn"

    @property
    def lends_llm_key(self) -> bool:
        """Whether `/llm/v1` adds OPENAI_API_KEY to a request that brings no `Authorization` of its own."""
        return bool(self.openai_api_key) and bool(self.api_token or self.llm_proxy_open or self.trust_clients)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
        env = dict(_read_dotenv(dotenv)) if dotenv is not None else {}
        env.update(os.environ if environ is None else environ)
        cores = os.cpu_count() or 1
        return cls(
            port=_int(env, "PORT", 8080),
            host_name=_host_name(env, "HOST_NAME"),
            worker_processes=_int(env, "WORKER_PROCESSES", cores),
            max_calls=_int(env, "MAX_CALLS", 200),
            pack_calls=_int(env, "PACK_CALLS", 50),
            pack_poll_ms=_float(env, "PACK_POLL_MS", 50.0),
            dispatch_local_ms=_float(env, "DISPATCH_LOCAL_MS", 40.0),
            redis_url=env.get("REDIS_URL", ""),
            redis_prefix=env.get("REDIS_PREFIX", "pbx:") or "pbx:",
            recorder_path=env.get("RECORDER_PATH", "") or "/tmp/recorders",
            media_cache_path=env.get("MEDIA_CACHE_PATH", "") or "/tmp/mediacache",
            media_path=_dirs(env, "MEDIA_PATH"),
            recorder_quota_mb=_float(env, "RECORDER_QUOTA_MB", 1024.0),
            media_cache_max_mb=_float(env, "MEDIA_CACHE_MAX_MB", 1024.0),
            public_ip=env.get("PUBLIC_IP", ""),
            rtp_port_min=_int(env, "RTP_PORT_MIN", 12000),
            rtp_port_max=_int(env, "RTP_PORT_MAX", 42000),
            sip_port=_int(env, "SIP_PORT", 25060),
            sip_webhook_url=env.get("SIP_WEBHOOK_URL", ""),
            sip_addr=env.get("SIP_ADDR", "") or "0.0.0.0",
            sip_accept_timeout=_float(env, "SIP_ACCEPT_TIMEOUT", 50.0),
            sip_register=env.get("SIP_REGISTER", ""),
            ice_servers=env.get("ICE_SERVERS", ""),
            restsend_token=env.get("RESTSEND_TOKEN", ""),
            restsend_ice_url=env.get("RESTSEND_ICE_URL", "") or "https://restsend.com/api/iceservers",
            rtc_addresses=tuple(a.strip() for a in env.get("RTC_ADDRESSES", "").split(",") if a.strip()),
            rtc_media_timeout=_float(env, "RTC_MEDIA_TIMEOUT", 10.0),
            openai_base_url=env.get("OPENAI_BASE_URL", "") or "https://api.openai.com/v1",
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            tencent_appid=env.get("TENCENT_APPID", ""),
            tencent_secret_id=env.get("TENCENT_SECRET_ID", ""),
            tencent_secret_key=env.get("TENCENT_SECRET_KEY", ""),
            voiceapi_endpoint=env.get("VOICEAPI_ENDPOINT", ""),
            voiceapi_speaker_id=env.get("VOICEAPI_SPEAKER_ID", ""),
            drain_timeout=_float(env, "DRAIN_TIMEOUT", 30.0),
            heartbeat_ttl=_float(env, "PBX_HEARTBEAT_TTL", 3.0),
            claim_timeout=_float(env, "PBX_CLAIM_TIMEOUT", 10.0),
            reap_grace=_float(env, "PBX_REAP_GRACE", 1.0),
            loop_stall_limit=_float(env, "PBX_LOOP_STALL_LIMIT", 30.0),
            load_loop_busy=_float(env, "PBX_LOAD_LOOP_BUSY", 0.75),
            load_lag_ms=_float(env, "PBX_LOAD_LAG_MS", 30.0),
            load_tick_ms=_float(env, "PBX_LOAD_TICK_MS", 10.0),
            load_resume=_float(env, "PBX_LOAD_RESUME", 0.8),
            test_tick_burn_us=_float(env, "PBX_TEST_TICK_BURN_US", 0.0),
            test_stall_seconds=_float(env, "PBX_TEST_STALL_SECONDS", 0.0),
            test_warmup_seconds=_float(env, "PBX_TEST_WARMUP_SECONDS", 0.0),
            log_level=env.get("LOG_LEVEL", "") or "INFO",
            api_token=env.get("API_TOKEN", ""),
            cors_origins=_origins(env, "CORS_ORIGINS"),
            ws_max_commands_per_sec=_float(env, "WS_MAX_COMMANDS_PER_SEC", 100.0),
            ws_max_tts_pieces_per_sec=_float(env, "WS_MAX_TTS_PIECES_PER_SEC", 5000.0),
            ws_max_audio_frames_per_sec=_float(env, "WS_MAX_AUDIO_FRAMES_PER_SEC", 150.0),
            llm_proxy_open=_bool(env, "LLM_PROXY_OPEN"),
            trust_clients=_bool(env, "TRUST_CLIENTS"),
            media_link=_bool(env, "MEDIA_LINK") if env.get("MEDIA_LINK", "").strip() else True,
            media_link_host=env.get("MEDIA_LINK_HOST", "").strip() or "127.0.0.1",
            calls_per_ip_per_min=_float(env, "CALLS_PER_IP_PER_MIN", 300.0),
            calls_per_ip_burst=_float(env, "CALLS_PER_IP_BURST", 100.0),
            trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
            allow_private_urls=_bool(env, "ALLOW_PRIVATE_URLS"),
            allowed_url_hosts=_allowed_hosts(env, "ALLOWED_URL_HOSTS"),
            smart_turn_window=_choice(env, "SMART_TURN_WINDOW", ("turn", "whole", "auto")),
        )

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            elif f.name == "redis_url" and value:
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__
