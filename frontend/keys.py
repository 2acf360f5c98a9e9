"""Typed application keys of the frontend app."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from common.config import Settings
from frontend.hub import Hub

HUB = web.AppKey("hub", Hub)
SETTINGS = web.AppKey("settings", Settings)
# The HTTP client of the `/llm/v1` proxy, shared by all its requests in this process.
LLM_SESSION = web.AppKey("llm_session", aiohttp.ClientSession)
