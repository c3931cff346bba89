"""Client keys, refusing unauthenticated remote listening and remote admins, the cap on concurrent chats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler, Middleware

from scout_diff_cache.app import make_app
from scout_diff_cache.config import load_config
from scout_diff_cache.errors import ConfigError

from support import FakeUpstream, GitRepo, ProxyFactory, chat, proxy_config, until, write_config

#: A documentation address (RFC 5737): what the app sees as a client beyond loopback.
REMOTE = "198.51.100.7"


def keys_file(tmp_path: Path, *keys: str) -> str:
    path = tmp_path / "clients.keys"
    path.write_text("# one key per line\n" + "\n".join(keys) + "\n")
    return str(path)


async def test_every_route_but_health_needs_a_valid_key(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    client = await make_proxy(server={"api_keys_file": keys_file(tmp_path, "key-one", "key-two")})
    assert (await client.get("/health")).status == 200
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer"},
    ):
        response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.json())["error"]["code"] == "invalid_api_key"
        assert (await client.get("/metrics", headers=headers)).status == 401
    assert upstream.seen == []
    for key in ("key-one", "key-two"):
        response = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200
    assert "Bearer key-one" not in str(upstream.seen[0].headers)  # client keys never go upstream


def test_listening_beyond_loopback_needs_keys_or_an_explicit_choice(tmp_path: Path, git_repo: GitRepo) -> None:
    base = {"repository": {"path": "repo"}}
    with pytest.raises(
        ConfigError, match=r"\[server\] host = '0.0.0.0': listening beyond loopback needs api_keys_file"
    ):
        load_config(write_config(tmp_path, {**base, "server": {"host": "0.0.0.0"}}))
    allowed = {"host": "0.0.0.0", "allow_unauthenticated_remote": "true"}
    assert load_config(write_config(tmp_path, {**base, "server": allowed})).server.host == "0.0.0.0"
    keyed = {"host": "::", "api_keys_file": keys_file(tmp_path, "k")}
    assert load_config(write_config(tmp_path, {**base, "server": keyed})).server.api_keys == ("k",)
    assert load_config(write_config(tmp_path, {**base, "server": {"host": "localhost"}})).server.api_keys == ()


def test_an_empty_or_missing_keys_file_is_refused(tmp_path: Path, git_repo: GitRepo) -> None:
    with pytest.raises(ConfigError, match="no keys in it"):
        load_config(
            write_config(tmp_path, {"repository": {"path": "repo"}, "server": {"api_keys_file": keys_file(tmp_path)}})
        )
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(write_config(tmp_path, {"repository": {"path": "repo"}, "server": {"api_keys_file": "nope.keys"}}))


async def test_past_max_concurrent_requests_a_429_with_retry_after(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def held(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.wait_for(fake.release.wait(), 10)
        return web.json_response({"choices": []})

    upstream.behaviour = held
    client = await make_proxy(server={"max_concurrent_requests": "2"})
    first = [asyncio.ensure_future(client.post("/v1/chat/completions", json=chat())) for _ in range(2)]
    await until(lambda: len(upstream.seen) == 2)
    refused = await client.post("/v1/chat/completions", json=chat())
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["type"] == "rate_limit_error"
    assert (await client.get("/health")).status == 200  # other routes are not capped
    upstream.release.set()
    assert [(await response).status for response in first] == [200, 200]
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200


def seen_as_from(remote: str) -> Middleware:
    """A test-only first middleware: the app sees every request as coming from `remote`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=remote))

    return middleware


async def test_admin_rebase_refuses_remote_clients_unless_client_keys_are_configured(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_client: Any
) -> None:
    async def proxy(name: str, remote: str | None, **sections: dict[str, str]) -> TestClient:
        directory = tmp_path / name  # a state_dir of its own
        directory.mkdir()
        app = make_app(proxy_config(directory, git_repo, upstream.url, **sections))
        if remote is not None:
            app.middlewares.insert(0, seen_as_from(remote))
        return await aiohttp_client(app)

    local = await proxy("local", None)
    assert (await local.post("/admin/rebase")).status == 200  # the same app, from loopback

    remote = await proxy("remote", REMOTE)
    refused = await remote.post("/admin/rebase")
    assert refused.status == 403
    assert await refused.json() == {
        "error": {
            "message": "admin routes accept only loopback clients, or clients with an API key (api_keys_file)",
            "type": "invalid_request_error",
            "code": "forbidden",
        }
    }
    assert (await remote.get("/health")).status == 200  # only the admin route is refused

    keyed = await proxy("keyed", REMOTE, server={"api_keys_file": keys_file(tmp_path, "admin-key")})
    assert (await keyed.post("/admin/rebase")).status == 401  # a key is still needed
    done = await keyed.post("/admin/rebase", headers={"Authorization": "Bearer admin-key"})
    assert done.status == 200
    assert (await done.json())["base"] == git_repo.head()
