"""Reading the repository: a repository that breaks gives an error envelope, and recovers."""

from __future__ import annotations

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    chat,
)


async def test_a_vanished_repository_is_a_500_and_recovers_when_restored(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    hidden = git_repo.path.with_name("moved-away")
    git_repo.path.rename(hidden)
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["code"] == "repository_error" and "repository" in error["message"]
    hidden.rename(git_repo.path)
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200


async def test_a_corrupt_head_is_a_500_and_recovers_when_repaired(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    head_file = git_repo.path / ".git" / "HEAD"
    original = head_file.read_text()
    head_file.write_text("garbage\n")
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.status == 500
    assert (await response.json())["error"]["type"] == "server_error"
    head_file.write_text(original)
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
