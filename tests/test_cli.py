"""The command line: check-config, inspect, rebase, --version, exit codes and their one-line errors."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    ProxyProcess,
    chat,
    free_port,
    run_cli,
    write_config,
)

#: Writes a config on a free port (with any extra `[server]` settings) and returns its process, not yet started.


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


async def rebase_command(config: Path) -> tuple[int | None, str, str]:
    """`scout-diff-cache rebase`, as a user runs it: its exit status and what it printed."""
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scout_diff_cache",
        "rebase",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(command.communicate(), 60)
    return command.returncode, out.decode(), err.decode()


async def test_rebase_command_talks_to_the_running_proxy(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path,
        {
            "server": {"port": str(free_port())},
            "upstream": {"url": upstream.url},
            "repository": {"path": "repo"},
            "context": {"state_dir": "state", "rebase": "manual"},
        },
    )
    async with ProxyProcess(config, tmp_path / "proxy.log") as proxy:
        old = git_repo.head()
        git_repo.write("src/app.py", "new\n")
        new = git_repo.commit("new")
        returncode, out, err = await rebase_command(config)
        assert returncode == 0, err
        assert f"rebased the snapshot from {old} to {new}" in out
        assert "warm-up cached 90 of 100 prompt tokens" in out
        assert await proxy.stop() == 0
    returncode, _, err = await rebase_command(config)
    assert returncode == 1 and "cannot reach the proxy" in err
