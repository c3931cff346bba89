"""Typed keys for what the application and each request hold (no module globals), and the state a
reload replaces, built by one function at start and at reload."""

from __future__ import annotations

import asyncio
from functools import partial

import attrs
from aiohttp import web

from .accounting import Exchange, Totals
from .apis.dialects import Dialect
from .config import Config
from .context.building import AfterBuild, Prepare, Warmer
from .context.conversations import Conversations
from .context.epochs import Epochs, reader_for
from .context.fitting import split_for
from .context.split import Split, client_room
from .metrics import Metrics
from .recent import Recent
from .shared import SharedTasks
from .upstream.client import Upstream
from .upstream.counting import TokenCounter
from .upstream.layout import Layouts, Probe
from .upstream.prompt_ids import PromptIds
from .upstream.routing import Routing
from .upstream.tokens import InjectedTokens
from .upstream.window import Ask, Windows
from .warming import WarmUps


@attrs.define
class Live:
    """What a reload (SIGHUP) may replace while requests run: the configuration, and the epochs and
    conversations when the repository settings changed. Handlers read it per request."""

    config: Config
    epochs: Epochs
    conversations: Conversations
    #: Where the context sits on chat and Responses (learned from the upstream, or configured).
    layouts: Layouts
    #: The upstream's context window (learned from it, or configured).
    windows: Windows
    routing: Routing = attrs.Factory(Routing)

    def split(self, window: int) -> Split:
        """How `window` tokens are shared under the configured parts."""
        return split_for(self.config.context, window)

    def client_window(self) -> int | None:
        """The tokens a client's conversation and answer may take (see `split.client_room`); the
        whole window without injection; None while the window is not known."""
        window = self.windows.known.tokens
        if window is None or not self.config.context.inject:
            return window
        snapshot = self.epochs.snapshot
        return client_room(self.split(window), snapshot.tokens if snapshot is not None else None)

    def take_settings(self, fresh: Live) -> None:
        """The configuration, layouts and window of `fresh` (a reload): the next request follows them."""
        self.config, self.layouts, self.windows = fresh.config, fresh.layouts, fresh.windows

    def take_repository(self, fresh: Live) -> Epochs:
        """The epochs, conversations and routing of `fresh`; the epochs replaced, to be closed."""
        retired = self.epochs
        self.epochs, self.conversations, self.routing = fresh.epochs, fresh.conversations, fresh.routing
        return retired


@attrs.frozen
class Wiring:
    """What the application lends the state it builds: its counters, how to warm the upstream,
    probe its template and ask it about itself, and the process-wide tuning after each snapshot
    build (the server's only)."""

    metrics: Metrics
    warmer: Warmer
    probe: Probe
    probes: SharedTasks
    ask: Ask
    after_build: AfterBuild | None = None
    #: How a snapshot build is fitted to the upstream's window (see `context/fitting.py`).
    prepare: Prepare | None = None


def repository_changed(old: Config, new: Config) -> bool:
    """Whether `new` needs another snapshot: the repository, security or state directory changed."""
    return (
        new.repository != old.repository
        or new.security != old.security
        or new.context.state_dir != old.context.state_dir
    )


def build_live(config: Config, wiring: Wiring, previous: Live | None = None) -> Live:
    """The state serving `config`. At a reload (`previous`), what the change leaves valid is kept
    and follows the new settings: the epochs and conversations unless the repository settings
    changed (new ones are built, and `previous` keeps serving until they are swapped in), the
    layouts and window unless their setting or the upstream changed (then they are learned again)."""
    if previous is not None:
        previous.epochs.configure(config.context)
        previous.conversations.resize(config.context.max_conversations)
    if previous is None or repository_changed(previous.config, config):
        reader = reader_for(config)
        epochs = Epochs(reader, config, wiring.metrics, wiring.warmer, wiring.after_build, wiring.prepare)
        conversations = Conversations(config.context.max_conversations, wiring.metrics, epochs, reader)
        routing = Routing()
    else:
        epochs, conversations, routing = previous.epochs, previous.conversations, previous.routing
    if previous is None:
        layouts = Layouts(config.context.layout, wiring.probe, wiring.probes)
    elif config.context.layout != previous.config.context.layout or config.upstream != previous.config.upstream:
        layouts = previous.layouts.reconfigured(config.context.layout)
    else:
        layouts = previous.layouts
    return Live(config, epochs, conversations, layouts, _windows(config, wiring, previous), routing)


def _windows(config: Config, wiring: Wiring, previous: Live | None) -> Windows:
    """The window of `previous` while the upstream settings stay; otherwise one to learn anew."""
    if previous is not None and config.upstream == previous.config.upstream:
        return previous.windows
    return Windows(config.upstream.context_window, wiring.ask, partial(_target, config), wiring.probes)


def _target(config: Config) -> tuple[str, str]:
    return config.upstream.url, config.upstream.model


async def identify(live: Live) -> None:
    """Give `live` the routing key of its repository (read in a thread: it opens the repository)."""
    live.routing = Routing(await asyncio.to_thread(live.epochs.repository_key))


live_key = web.AppKey("live", Live)
upstream_key = web.AppKey("upstream", Upstream)
wiring_key = web.AppKey("wiring", Wiring)
totals_key = web.AppKey("totals", Totals)
metrics_key = web.AppKey("metrics", Metrics)
tokens_key = web.AppKey("tokens", InjectedTokens)
#: The snapshot's token ids per epoch, for `[upstream] prompt = tokens` or `auto`.
prompt_ids_key = web.AppKey("prompt_ids", PromptIds)
#: Each file content's tokens, as each upstream counted them (kept across rebases and reloads).
counter_key = web.AppKey("counter", TokenCounter)
#: The probes of the upstream's template under way, shared by the requests that wait for one.
probes_key = web.AppKey("probes", SharedTasks)
#: The last requests and their diagnoses, and the warm-ups (the status page's).
recent_key = web.AppKey("recent", Recent)
warmups_key = web.AppKey("warmups", WarmUps)
exchange_key = web.RequestKey("exchange", Exchange)
#: The client API of the route that took the request (see `routes.Route.dialect`).
dialect_key: web.RequestKey[Dialect] = web.RequestKey("dialect")
