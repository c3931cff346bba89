"""The real `python -m scout_diff_cache` process: CLI, startup, logs, restarts and shutdown."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from scout_diff_cache.app import _background

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    ProxyProcess,
    answer_stream,
    chat,
    free_port,
    run_cli,
    write_config,
)

#: Writes a config on a free port (with any extra `[server]` settings) and returns its process, not yet started.
ProcessFactory = Callable[..., ProxyProcess]


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path, git_repo: GitRepo) -> None:
    path = write_config(tmp_path, {"upstream": {"api_key": "sk-do-not-print"}, "repository": {"path": "repo"}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"# loaded from: {path}" in result.stdout
    assert "api_key = ********" in result.stdout
    assert "sk-do-not-print" not in result.stdout + result.stderr


def test_a_bad_config_exits_2_with_one_line(tmp_path: Path, git_repo: GitRepo) -> None:
    path = write_config(tmp_path, {"server": {"port": "http"}, "repository": {"path": "repo"}})
    for command in ("check-config", "serve"):
        result = run_cli(command, "--config", str(path))
        assert result.returncode == 2
        assert (
            result.stderr.strip()
            == f"scout-diff-cache: {path}: [server] port = 'http': expected a TCP port from 1 to 65535"
        )
        assert result.stdout == ""


def test_no_config_file_runs_on_defaults_in_the_current_directory(git_repo: GitRepo) -> None:
    result = run_cli("check-config", cwd=git_repo.path)
    assert result.returncode == 0, result.stderr
    assert "# loaded from: (built-in defaults)" in result.stdout
    assert f"path = {git_repo.path.resolve()}" in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("scout-diff-cache ")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def proxy_factory(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> ProcessFactory:
    def make(**server: str) -> ProxyProcess:
        port = free_port()
        config = write_config(
            tmp_path,
            {
                "server": {"port": str(port), **server},
                "upstream": {"url": upstream.url, "api_key": "sk-never-logged"},
                "repository": {"path": "repo"},
                "context": {"state_dir": "state"},
            },
        )
        return ProxyProcess(config, tmp_path / f"proxy-{port}.log")

    return make


async def test_two_separately_started_processes_send_byte_identical_snapshots(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    for _ in range(2):
        async with proxy_factory() as proxy:
            async with session.post(f"{proxy.url}/v1/chat/completions", json=chat()) as response:
                assert response.status == 200
            assert await proxy.stop() == 0
    first, second = (seen.raw.split(b',{"role":"system"', 1)[0] for seen in upstream.asked)
    assert first == second and b"=== file: src/app.py [2 lines] ===" in first


async def test_logs_say_what_was_loaded_and_never_contents_or_keys(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    async with proxy_factory() as proxy:
        body = chat({"role": "user", "content": "PRIVATE-QUESTION-TEXT"})
        headers = {"Authorization": "Bearer sk-client"}
        async with session.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
        await proxy.stop()
    log = proxy.log.read_text()
    assert f"config: {proxy.config}" in log
    assert "POST /v1/chat/completions 200" in log and "cached_tokens=90" in log
    for secret in ("PRIVATE-QUESTION-TEXT", "sk-never-logged", "sk-client", "return 'hello'"):
        assert secret not in log


async def test_sigterm_lets_an_in_flight_stream_finish_then_exits_0(
    proxy_factory: ProcessFactory,
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
) -> None:
    async def slow(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return await answer_stream(request, fake)

    upstream.behaviour = slow
    async with proxy_factory(shutdown_grace="20s") as proxy:
        async with session.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True)) as response:
            await asyncio.sleep(0.3)
            proxy.send_signal(signal.SIGTERM)
            text = await response.text()
        assert text.endswith("data: [DONE]\n\n")
        assert await proxy.wait(30) == 0  # one signal only, as systemd sends
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{proxy.url}/health"):
            pass


def test_inspect_reports_what_would_leave_the_machine(tmp_path: Path, git_repo: GitRepo) -> None:
    git_repo.write("logo.png", b"\x89PNG\r\n\x1a\n\x00binary")
    git_repo.write("big.txt", "x" * 3000 + "\n")
    git_repo.write("node_modules/dep.js", "dependency\n")
    git_repo.write("filler.txt", "y" * 900 + "\n")
    git_repo.commit("assets")
    git_repo.write("src/app.py", "edited\n")
    config = write_config(
        tmp_path,
        {
            "repository": {"path": "repo", "max_file_bytes": "2KiB", "max_snapshot_bytes": "1000"},
            "context": {"state_dir": "state"},
        },
    )
    result = run_cli("inspect", "--config", str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"base commit  {git_repo.head()}" in out and "(the base)" in out
    assert re.search(r"snapshot     \d+ files inlined, [\d,]+ bytes, ~[\d,]+ tokens", out)
    assert re.search(r"diff         1 file diffs", out)
    assert "excluded               node_modules/dep.js" in out
    assert "binary                 logo.png (15 bytes)" in out
    assert "too large              big.txt (3001 bytes)" in out
    assert "over the snapshot cap  filler.txt (901 bytes)" in out

    shown = run_cli("inspect", "--config", str(config), "--show", "diff").stdout
    assert shown.startswith("# Working diff") and "+edited" in shown
    files = run_cli("inspect", "--config", str(config), "--show", "files").stdout
    assert [line.split()[-1] for line in files.splitlines()] == ["README.md", "src/app.py", "src/util.py"]


async def test_inspect_shows_exactly_the_snapshot_the_proxy_sends(
    tmp_path: Path,
    git_repo: GitRepo,
    upstream: FakeUpstream,
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy()
    async with client.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    git_repo.write("src/app.py", "def main():\n    return 'committed later'\n")
    git_repo.commit("a commit the epoch carries in its diff")
    shown = await asyncio.to_thread(run_cli, "inspect", "--config", str(tmp_path / "scout.ini"), "--show", "snapshot")
    assert shown.stdout == upstream.asked[0].json["messages"][0]["content"]


def test_inspect_fails_with_1_when_the_repository_is_broken(tmp_path: Path, git_repo: GitRepo) -> None:
    config = write_config(tmp_path, {"repository": {"path": "repo"}, "context": {"state_dir": "state"}})
    (git_repo.path / ".git" / "HEAD").write_text("garbage\n")
    result = run_cli("inspect", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("scout-diff-cache: ") and len(result.stderr.strip().splitlines()) == 1


async def test_a_background_task_that_swallows_a_cancellation_still_ends_at_shutdown() -> None:
    """As `asyncio.wait_for` does on Python 3.11 when the cancellation meets a finished call."""
    cancellations = 0

    async def stubborn(app: web.Application) -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise

    async with asyncio.timeout(10) as bound:  # a shutdown that would wait forever is cut short
        async with _background(stubborn)(web.Application()):
            await asyncio.sleep(0.05)
    assert not bound.expired() and cancellations == 2
