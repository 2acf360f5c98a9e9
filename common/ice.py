"""ICE server lists (`ICE_SERVERS`, RESTSEND answers): one shape for browsers and the server's own peers."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("pbx.ice")

IceServer = dict[str, Any]


class InvalidIceServers(ValueError):
    """A list of ICE servers that does not have the `[{"urls", "username"?, "credential"?}]` shape.

    The message names the place, never the value: entries may hold TURN credentials.
    """


def normalize(raw: Any) -> list[IceServer]:
    """`raw` as `[{"urls": [...], "username"?, "credential"?}]`, with a string `urls` made a list and null
    `username`/`credential` dropped (browsers reject `username: null`); other keys are ignored."""
    if not isinstance(raw, list):
        raise InvalidIceServers("expected a JSON list of ICE servers")
    servers: list[IceServer] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InvalidIceServers(f"entry {i}: expected an object")
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise InvalidIceServers(f"entry {i}: urls must be a URL or a non-empty list of URLs")
        server: IceServer = {"urls": list(urls)}
        for name in ("username", "credential"):
            value = entry.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidIceServers(f"entry {i}: {name} must be a string")
            server[name] = value
        servers.append(server)
    return servers


def parse_configured(text: str) -> list[IceServer] | None:
    """The `ICE_SERVERS` setting, or None when it is unset or unusable (logged once, here).

    An explicit `[]` is a configuration too: no ICE servers at all, as on a LAN or in tests."""
    if not text.strip():
        return None
    try:
        return normalize(json.loads(text))
    except json.JSONDecodeError as exc:
        reason = f"not JSON ({exc.msg} at character {exc.pos})"
    except InvalidIceServers as exc:
        reason = str(exc)
    log.warning("ICE_SERVERS ignored: %s", reason)
    return None
