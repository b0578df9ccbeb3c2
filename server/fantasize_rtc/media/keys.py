"""The aiohttp app key under which the media manager lives."""

from __future__ import annotations

from aiohttp import web

from .manager import MediaManager

__all__ = ["MEDIA_KEY"]

MEDIA_KEY = web.AppKey("media", MediaManager)
