"""The fixtures: a real git repository, a real upstream on 127.0.0.1, the real proxy.

The helpers they use (and that tests import) are in support.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scout_diff_cache.app import make_app

from support import FakeUpstream, GitRepo, ProxyFactory, UpstreamFactory, proxy_config


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "# Demo\n\nA small project.\n")
    repo.write("src/app.py", "def main():\n    return 'hello'\n")
    repo.write("src/util.py", "def add(a, b):\n    return a + b\n")
    repo.commit("initial")
    return repo


@pytest.fixture
async def make_upstream(aiohttp_server: Any) -> AsyncIterator[UpstreamFactory]:
    """Start fake upstreams on 127.0.0.1; at teardown, fail the test if any handler raised or failed."""
    started: list[FakeUpstream] = []

    async def factory(port: int | None = None) -> FakeUpstream:
        fake = FakeUpstream()
        fake.server = await aiohttp_server(fake.app(), host="127.0.0.1", port=port)
        started.append(fake)
        return fake

    yield factory
    for fake in started:
        assert fake.server is not None
        await fake.server.close()  # handlers still running finish (or are cancelled) first
    failed = [fake for fake in started if fake.errors]
    if failed:
        pytest.fail(
            "the fake upstream's handlers failed:\n" + "\n".join(fake.report() for fake in failed), pytrace=False
        )


@pytest.fixture
async def upstream(make_upstream: UpstreamFactory) -> FakeUpstream:
    return await make_upstream()


@pytest.fixture
def make_proxy(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_client: Any) -> ProxyFactory:
    async def factory(repo: GitRepo | None = None, url: str | None = None, **sections: dict[str, str]) -> TestClient:
        config = proxy_config(tmp_path, repo or git_repo, url or upstream.url, **sections)
        return await aiohttp_client(make_app(config))

    return factory
