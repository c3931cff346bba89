"""The application: routes, middlewares, and the resources that live as long as it does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .access import Admission, admission_key
from .accounting import Exchange, Totals
from .apis.assembly import chat_context
from .apis.dialects import CHAT
from .config import Config
from .context.building import AfterBuild
from .context.fitting import Fitting, fitting_for
from .errors import (
    BodyTooLarge,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    UpstreamError,
    UpstreamUnavailable,
)
from .git.diff import WorkingDiff
from .git.repository import short
from .git.snapshot import Snapshot
from .metrics import Metrics
from .recent import Recent
from .report import BYTES_PER_TOKEN
from .routes import add_routes
from .sent import warmed_prompt
from .shared import SharedTasks
from .state import (
    Wiring,
    build_live,
    counter_key,
    dialect_key,
    exchange_key,
    identify,
    live_key,
    metrics_key,
    probes_key,
    prompt_ids_key,
    recent_key,
    tokens_key,
    totals_key,
    upstream_key,
    warmups_key,
    wiring_key,
)
from .upstream.client import Upstream, tokenize
from .upstream.counting import TokenCounter
from .upstream.prompt_ids import PromptIds
from .upstream.tokens import InjectedTokens
from .upstream.truncation import describe as describe_truncation
from .upstream.truncation import truncated
from .usage import Usage
from .warming import WarmUps

log = logging.getLogger("scout_diff_cache")

#: Outcomes that tell how the upstream is doing (for systemd's STATUS line).
UPSTREAM_OUTCOMES = frozenset({"ok", *(kind.code for kind in UpstreamError.__subclasses__())})


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request; never bodies, message contents or keys."""
    exchange = request[exchange_key] = Exchange()
    started = time.monotonic()
    status: int | str = "-"
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status, exchange.outcome = "-", "client_closed"
        raise
    finally:
        elapsed = time.monotonic() - started
        _diagnose(request.app, exchange)
        request.app[totals_key].add(exchange)
        _record(request, exchange, status, elapsed)
        log.info(
            "%s %s %s %.3fs %s",
            request.method,
            request.path,
            status,
            elapsed,
            exchange.describe(),
        )


def _record(request: web.Request, exchange: Exchange, status: int | str, elapsed: float) -> None:
    metrics = request.app[metrics_key]
    resource = request.match_info.route.resource
    route = (("route", resource.canonical if resource is not None else "unmatched"),)
    metrics.requests.inc((*route, ("method", request.method), ("status", str(status))))
    metrics.request_seconds.observe(elapsed, route)
    if exchange.first_byte_seconds is not None:
        metrics.first_byte_seconds.observe(exchange.first_byte_seconds)
    if exchange.to_upstream and exchange.outcome in UPSTREAM_OUTCOMES:
        metrics.last_upstream_outcome = exchange.outcome
    live = request.app[live_key]
    if exchange.usage is not None and exchange.injected_bytes:
        whole_prompt(request.app, exchange.sent_bytes, exchange.usage.prompt_tokens, exchange.snapshot_tokens)
    if exchange.outcome == UpstreamUnavailable.code:
        live.layouts.forget()  # the server that comes back may serve another template
        live.windows.forget()  # ... or another context
    elif exchange.to_upstream and exchange.outcome in UPSTREAM_OUTCOMES:
        live.windows.learn_soon()  # the upstream answers: learned if it was away


def _diagnose(app: web.Application, exchange: Exchange) -> None:
    """Where the cached prefix of a request that went upstream ended, and why: kept for the status
    page, told in the log line and counted when it broke before the new turn."""
    metrics = app[metrics_key]
    app[recent_key].observe(metrics.rebases.total, metrics.folds.total)
    if exchange.sent is None:
        return
    usage = exchange.usage
    figures = (usage.prompt_tokens, usage.cached_tokens) if usage is not None else (None, None)
    request = (exchange.client, exchange.api or "other", exchange.outcome, exchange.conversation)
    diagnosis = exchange.diagnosis = app[recent_key].add(exchange.sent, figures, request, app[warmups_key])
    if diagnosis.is_break:
        metrics.prefix_breaks.inc((("region", diagnosis.broke or "unknown"),))


@web.middleware
async def errors_to_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place an error becomes an error envelope: the envelope of the dialect whose route
    took the request (Anthropic's on the Messages API's), OpenAI's on every other route."""
    try:
        return await handler(request)
    except web.HTTPException as http_error:
        error = _from_http(http_error, request)
        if error is None:
            raise
    except ProxyError as proxy_error:
        error = proxy_error
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = ProxyError("internal error in the proxy; see its log")
    request[exchange_key].outcome = error.code
    dialect = request.get(dialect_key, CHAT)
    return web.Response(
        status=error.status, body=dialect.error_body(error), content_type="application/json", headers=error.headers
    )


def _from_http(error: web.HTTPException, request: web.Request) -> ProxyError | None:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge(
            f"the request body is larger than max_body_bytes ({request.app[live_key].config.server.max_body_bytes} bytes)"
        )
    if isinstance(error, web.HTTPNotFound):
        return NotFound(f"no route {request.method} {request.path}")
    if isinstance(error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(error.allowed_methods))}"
        )
    return None


def make_app(config: Config, after_build: AfterBuild | None = None) -> web.Application:
    """The proxy serving `config`; `after_build` is the process-wide tuning `serve` hands down,
    run after each snapshot build (see `runtime.after_build`)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[log_requests, errors_to_envelope],
    )
    app[admission_key] = Admission()
    app[totals_key] = Totals()
    app[metrics_key] = metrics = Metrics()
    app[tokens_key] = InjectedTokens()
    app[prompt_ids_key] = PromptIds(metrics)
    app[recent_key] = Recent()
    app[warmups_key] = WarmUps()
    app[probes_key] = probes = SharedTasks()
    app[counter_key] = TokenCounter(lambda body: tokenize(app[upstream_key], body))
    app[wiring_key] = wiring = Wiring(
        metrics,
        partial(_warm, app),
        partial(_probe, app),
        probes,
        partial(_about, app),
        after_build,
        partial(_prepare, app),
    )
    app[live_key] = build_live(config, wiring)
    add_routes(app)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_epochs)
    app.cleanup_ctx.append(_background(_first_epoch))
    app.cleanup_ctx.append(_background(_learn_window))
    app.cleanup_ctx.append(_background(_keep_warm))
    return app


async def _warm(app: web.Application, snapshot: Snapshot, diff: WorkingDiff) -> Usage | None:
    """Warm the prefix up; with `usage = client`, learn its tokens from the upstream's count.
    The question alone goes first (once), so the warmed prefix is what the upstream holds last."""
    live, upstream = app[live_key], app[upstream_key]
    measuring = live.config.context.usage == "client"
    counts = app[tokens_key].of(upstream.config.url, upstream.config.model)
    if measuring and counts.bare is None:
        alone = await upstream.warm_up()
        if alone is not None and alone.prompt_tokens is not None:
            counts.bare = alone.prompt_tokens
    strict = (await live.layouts.current()).strict
    injected = snapshot.text_bytes + diff.text_bytes
    tokens = counts.count(snapshot.commit, injected) or snapshot.tokens or injected // BYTES_PER_TOKEN
    warmups, usage = app[warmups_key], None
    started = warmups.begin(warmed_prompt(snapshot, diff), tokens)
    try:
        report = partial(warmups.report, started) if live.windows.known.streams_progress else None
        usage = await upstream.warm_up(*chat_context(snapshot.json_text, diff.json_text, strict), report=report)
    finally:
        warmups.end(started, usage)
    if usage is not None and usage.prompt_tokens:
        whole_prompt(app, injected, usage.prompt_tokens, snapshot.tokens)
        _confirm_fit(snapshot, usage.prompt_tokens)
    if not measuring:
        return usage
    if usage is not None and usage.prompt_tokens is not None and counts.bare is not None:
        counts.learn(snapshot.commit, injected, usage.prompt_tokens - counts.bare)
    else:
        counts.unmeasurable(snapshot.commit)
        log.warning("the upstream reports no prompt tokens: usage is relayed as it counted it")
    return usage


async def _prepare(app: web.Application, commit: str, previous: frozenset[str] | None) -> Fitting | None:
    """The fit of a build of `commit` to the window, keeping the `previous` choice; None while
    the window is not known."""
    live, upstream = app[live_key], app[upstream_key]
    window = await live.windows.current()
    if window.tokens is None:
        log.warning(
            "the upstream's context window is not known, so the snapshot is not fitted to it: %s", window.source
        )
        return None
    url, model = upstream.config.url, upstream.config.model
    counter = app[counter_key].bound(url, model, app[tokens_key].of(url, model).rate)
    return fitting_for(live.config, window.tokens, counter, commit, previous)


def _confirm_fit(snapshot: Snapshot, prompt_tokens: int) -> None:
    """The warm-up's prompt (snapshot, diff, a one-line question) as the upstream counted it,
    against the parts of the window the snapshot was fitted to: said either way."""
    if snapshot.budget is None or snapshot.diff_budget is None:
        return
    parts = snapshot.budget + snapshot.diff_budget
    if prompt_tokens > parts:
        log.warning(
            "the warm-up of snapshot %s took %d prompt tokens, more than the %d of the snapshot's and the diff's "
            "parts of the window: the conversations get less room than the split says",
            short(snapshot.commit),
            prompt_tokens,
            parts,
        )
    else:
        log.info(
            "the warm-up of snapshot %s confirms the fit: %d of %d prompt tokens",
            short(snapshot.commit),
            prompt_tokens,
            parts,
        )


def whole_prompt(app: web.Application, sent: int, prompt_tokens: int | None, snapshot_tokens: int | None) -> None:
    """Check that the upstream read the whole prompt (`sent` bytes of text): a cut one is said
    loudly (logged once while it lasts, counted, in /health and a response header)."""
    metrics = app[metrics_key]
    if not truncated(sent, prompt_tokens, snapshot_tokens):
        if prompt_tokens:
            metrics.truncation = None
        return
    assert prompt_tokens is not None
    metrics.truncated_prompts.inc()
    told = describe_truncation(sent, prompt_tokens, app[live_key].windows.known.tokens)
    if metrics.truncation is None:
        log.error("%s", told)
    metrics.truncation = told


async def _probe(app: web.Application, systems: int) -> ProxyError | None:
    return await app[upstream_key].probe_systems(systems)


async def _about(app: web.Application, method: str, url: str, body: dict[str, Any] | None) -> Any:
    return await app[upstream_key].about(method, url, body)


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    """The one upstream session; every request on it carries the repository's routing key. The
    upstream settings and the routing are read per request: a reload may replace them."""
    live = app[live_key]
    await identify(live)
    async with Upstream(lambda: app[live_key].config.upstream, lambda: app[live_key].routing) as upstream:
        app[upstream_key] = upstream
        yield


async def _epochs(app: web.Application) -> AsyncIterator[None]:
    """Whatever the epochs started (a build, a rebase in the background) ends with the app, and
    so does a probe of the upstream's template."""
    yield
    await app[live_key].epochs.close()
    await app[probes_key].close()
    await app[prompt_ids_key].close()


def _background(
    job: Callable[[web.Application], Coroutine[Any, Any, None]],
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A task that runs for the application's life and is cancelled at shutdown.

    Cancelled again until it ends: on Python 3.11, `asyncio.wait_for` returns its result instead of
    raising when the cancellation arrives just as the awaited call completes, so a loop such as the
    keep-alive pings can swallow one cancellation and go on (and shutdown would wait forever).
    """

    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(job(app))
        yield
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


async def _first_epoch(app: web.Application) -> None:
    """Build the snapshot at startup, so the first question does not wait for it."""
    if app[live_key].config.context.inject:
        with contextlib.suppress(ProxyError):  # logged where it failed; requests will retry
            await app[live_key].epochs.start()


async def _learn_window(app: web.Application) -> None:
    """Learn the upstream's context window at startup (logged when learned), or say why not yet."""
    windows = app[live_key].windows
    window = await windows.current()
    if window is not windows.learned:
        log.info("upstream context window: %s", window.describe())


async def _keep_warm(app: web.Application) -> None:
    """Re-send the prefix while requests still arrive, so an LRU cache under other load keeps it.

    A ping goes out after each interval in which at least one request arrived. The interval is
    read from the live configuration, so a reload can turn pings on or off.
    """
    while True:
        live = app[live_key]
        interval = live.config.context.keepalive_interval if live.config.context.inject else 0.0
        tick = time.monotonic()
        await asyncio.sleep(interval or 1.0)
        if not interval or live.epochs.last_request < tick:
            continue
        try:
            usage = await live.epochs.warm_now()
        except ProxyError as error:
            log.warning("keep-alive ping failed: %s", error.message)
        else:
            log.debug("keep-alive ping: %s", usage)
