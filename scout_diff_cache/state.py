"""Typed keys for what the application and each request hold (no module globals)."""

from __future__ import annotations

import attrs
from aiohttp import web

from .accounting import Exchange, Totals
from .apis.dialects import Dialect
from .config import Config
from .context.conversations import Conversations
from .context.epochs import Epochs
from .metrics import Metrics
from .shared import SharedTasks
from .upstream.client import Upstream
from .upstream.layout import Layouts
from .upstream.routing import Routing
from .upstream.tokens import InjectedTokens


@attrs.define
class Live:
    """What a reload (SIGHUP) may replace while requests run: the configuration, and the epochs and
    conversations when the repository settings changed. Handlers read it per request."""

    config: Config
    epochs: Epochs
    conversations: Conversations
    #: Where the context sits on chat and Responses (learned from the upstream, or configured).
    layouts: Layouts
    routing: Routing = attrs.Factory(Routing)


live_key = web.AppKey("live", Live)
upstream_key = web.AppKey("upstream", Upstream)
totals_key = web.AppKey("totals", Totals)
metrics_key = web.AppKey("metrics", Metrics)
tokens_key = web.AppKey("tokens", InjectedTokens)
#: The probes of the upstream's template under way, shared by the requests that wait for one.
probes_key = web.AppKey("probes", SharedTasks)
exchange_key = web.RequestKey("exchange", Exchange)
#: The client API of the route that took the request (see `routes.Route.dialect`).
dialect_key: web.RequestKey[Dialect] = web.RequestKey("dialect")
