"""What a media process offers the process-level parts that need it (load and admission, the SIP side):
a narrow view instead of the whole `MediaProcess`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from common.config import Settings
    from common.keys import Keys
    from common.registry import Registry


class ProcessHost(Protocol):
    """The media process as its process-level parts see it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def proc_id(self) -> str: ...

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def registry(self) -> Registry: ...

    def send(self, proc: str, message: dict[str, Any]) -> None: ...

    def call_count(self) -> int:
        """The calls the process carries now (inbound calls still pending not counted)."""
        ...
