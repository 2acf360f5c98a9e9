"""What a speech provider needs besides its option: the call, the credentials of the environment, and the
rule its connections obey."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Settings
from worker.urlguard import UrlGuard


@dataclass(frozen=True, slots=True)
class SpeechContext:
    """Fallbacks for options that leave credentials out (`TENCENT_*`, `VOICEAPI_*`); secrets not in repr.

    The Tencent credentials go only to Tencent's own hosts, unless `trust_clients` (TRUST_CLIENTS): an
    endpoint a client wrote must come with credentials of its own."""

    call_id: str
    tencent_appid: str = ""
    tencent_secret_id: str = ""
    tencent_secret_key: str = ""
    voiceapi_endpoint: str = ""
    voiceapi_speaker_id: str = ""
    trust_clients: bool = False
    guard: UrlGuard = UrlGuard()

    @classmethod
    def for_call(cls, call_id: str, settings: Settings, guard: UrlGuard) -> SpeechContext:
        return cls(
            call_id=call_id,
            tencent_appid=settings.tencent_appid,
            tencent_secret_id=settings.tencent_secret_id,
            tencent_secret_key=settings.tencent_secret_key,
            voiceapi_endpoint=settings.voiceapi_endpoint,
            voiceapi_speaker_id=settings.voiceapi_speaker_id,
            trust_clients=settings.trust_clients,
            guard=guard,
        )

    def __repr__(self) -> str:
        return f"SpeechContext(call_id={self.call_id!r})"
