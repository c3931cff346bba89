"""Routers and tenants: the repository's routing key on every upstream request, the cache salt."""

from __future__ import annotations

import pygit2
from aiohttp import web

from support import FakeUpstream, GitRepo, ProxyFactory, chat, completion, is_warmup

ROUTING_HEADERS = ("X-Session-ID", "X-SMG-Routing-Key")


def keys_sent(upstream: FakeUpstream) -> set[tuple[str | None, ...]]:
    return {tuple(seen.headers.get(name) for name in ROUTING_HEADERS) for seen in upstream.seen}


async def test_every_upstream_request_carries_the_repositorys_key_warm_ups_included(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual"})
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    git_repo.write("src/app.py", "changed\n")
    git_repo.commit("change")
    assert (await client.post("/admin/rebase")).status == 200
    assert (await client.post("/v1/chat/completions", json=chat(stream=True))).status == 200
    assert any(is_warmup(seen.json) for seen in upstream.seen)
    ((key, same),) = keys_sent(upstream)
    assert key == same and key is not None and key.startswith("scout-") and len(key) == 22
    assert key in upstream.seen[0].json["messages"][0]["content"][:300]  # the body's start names it too


async def test_the_key_is_the_same_in_every_clone_and_after_rebases_and_differs_between_repositories(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    pygit2.clone_repository(str(git_repo.path), str(git_repo.path.parent / "clone"))
    clone = GitRepo(git_repo.path.parent / "clone")
    clone.write("src/later.py", "LATER = 1\n")
    clone.commit("a later commit in the clone")
    other = GitRepo(git_repo.path.parent / "other")
    other.write("README.md", "# Another project\n")
    other.commit("its own first commit")
    for repo in (git_repo, clone, other):
        client = await make_proxy(repo)
        assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    keys = [seen.headers["X-Session-ID"] for seen in upstream.seen]
    assert keys[0] == keys[1] != keys[2]


async def test_with_routing_off_no_key_is_sent_and_the_headers_are_configurable(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    off = await make_proxy(upstream={"routing_key": "off"})
    assert (await off.post("/v1/chat/completions", json=chat())).status == 200
    assert keys_sent(upstream) == {(None, None)}
    upstream.seen.clear()
    dynamo = await make_proxy(upstream={"routing_key_headers": "x-dynamo-session-id"})
    assert (await dynamo.post("/v1/chat/completions", json=chat())).status == 200
    (seen,) = upstream.seen
    assert seen.headers["x-dynamo-session-id"].startswith("scout-") and "X-Session-ID" not in seen.headers


async def test_a_session_token_from_the_upstream_goes_back_on_later_requests(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def hand_out_a_token(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.json_response(completion(), headers={"x-session-token": "replica-2"})

    upstream.behaviour = hand_out_a_token
    client = await make_proxy()
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    assert [seen.headers.get("x-session-token") for seen in upstream.seen] == [None, "replica-2"]


async def test_a_configured_cache_salt_replaces_the_clients_on_every_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(upstream={"cache_salt": "tenant-a"}, context={"rebase": "manual"})
    assert (await client.post("/v1/chat/completions", json=chat(cache_salt="mine"))).status == 200
    git_repo.write("src/app.py", "changed\n")
    git_repo.commit("change")
    assert (await client.post("/admin/rebase")).status == 200  # its warm-up too
    assert {seen.json["cache_salt"] for seen in upstream.seen} == {"tenant-a"} and len(upstream.seen) == 2
    upstream.seen.clear()
    unset = await make_proxy()
    assert (await unset.post("/v1/chat/completions", json=chat(cache_salt="mine"))).status == 200
    assert upstream.seen[0].json["cache_salt"] == "mine"  # none configured: the client's passes


async def test_without_injection_the_salt_still_goes_in_and_the_body_is_otherwise_the_clients(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    client = await make_proxy(upstream={"cache_salt": "tenant-a"}, context={"inject": "false"})
    sent = chat(temperature=0.25)
    assert (await client.post("/v1/chat/completions", json=sent)).status == 200
    assert upstream.seen[0].json == {**sent, "cache_salt": "tenant-a"}
