"""Typed application keys of the frontend app."""

from __future__ import annotations

from aiohttp import web

from common.config import Settings
from frontend.hub import Hub

HUB = web.AppKey("hub", Hub)
SETTINGS = web.AppKey("settings", Settings)
