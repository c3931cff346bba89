"""Typed keys for what the application and each request hold (no module globals)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .accounting import Exchange, Totals
from .config import Config
from .context import RepositoryContext
from .metrics import Metrics

config_key = web.AppKey("config", Config)
session_key = web.AppKey("session", aiohttp.ClientSession)
context_key = web.AppKey("context", RepositoryContext)
totals_key = web.AppKey("totals", Totals)
metrics_key = web.AppKey("metrics", Metrics)
exchange_key = web.RequestKey("exchange", Exchange)
