"""The real process under (a stand-in for) systemd: notify sequence, watchdog, sockets, logs, units."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from support import (
    FakeUpstream,
    GitRepo,
    ProxyProcess,
    UpstreamFactory,
    answer_stream,
    chat,
    free_port,
    run_cli,
    write_config,
)


class NotifySocket:
    """The datagram socket systemd would own, recording what the service sends as it arrives."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        asyncio.get_running_loop().add_reader(self.sock, self._receive)

    def _receive(self) -> None:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()

    async def wait_for(self, field: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, message in self.messages:
                if field in message.split("\n"):
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"{field} never came; got {self.messages}")


@pytest.fixture
def config_file(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> Iterator[Path]:
    yield write_config(
        tmp_path,
        {
            "server": {"port": str(free_port())},
            "upstream": {"url": upstream.url},
            "repository": {"path": "repo"},
            "context": {"state_dir": "state"},
        },
    )


@pytest.mark.parametrize("abstract", [False, True])
async def test_notify_sequence_ready_watchdog_stopping(config_file: Path, tmp_path: Path, abstract: bool) -> None:
    address = f"@scout-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    notify = NotifySocket(address)
    service = ProxyProcess(
        config_file, tmp_path / "service.log", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    )
    try:
        await service.start(wait=False)  # ready is what the notify socket is told
        ready = await notify.wait_for("READY=1")
        assert "STATUS=serving " in ready
        await asyncio.sleep(1.0)
        pings = [at for at, message in notify.messages if "WATCHDOG=1" in message.split("\n")]
        assert len(pings) >= 3  # every 0.2 s: half of WATCHDOG_USEC
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert max(gaps) < 0.4
        statuses = [m for _, m in notify.messages if "STATUS=" in m]
        assert any("snapshot 65ae02a8b122, " in m for m in statuses)  # updated once the snapshot was built
        assert "(last answer: none yet)" in statuses[-1]
        service.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        assert await service.wait() == 0
    finally:
        service.kill()
        notify.close()


async def test_serves_on_a_socket_it_inherits(config_file: Path, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    service = ProxyProcess(
        config_file,
        tmp_path / "service.log",
        port=port,
        wrapper=["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh"],
        pass_fds=(fd, 3) if fd != 3 else (3,),
        preexec_fn=(lambda: os.dup2(fd, 3)) if fd != 3 else None,
    )
    try:
        await service.start(wait=False)
        listener.close()
        await service.ready()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        assert b"200 OK" in answer and b'"status": "ok"' in answer
        log = (tmp_path / "service.log").read_text()
        assert f"127.0.0.1:{port}" in log
        assert await service.stop() == 0
    finally:
        listener.close()
        service.kill()


async def test_journald_lines_have_priorities_and_no_timestamps(config_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "journal.log"
    log.touch()
    stat = log.stat()
    async with ProxyProcess(config_file, log, env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}) as service:
        assert await service.stop() == 0
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines
    assert any(line.startswith("<6>scout_diff_cache: scout-diff-cache ") for line in lines)
    assert not any(line[3:7].isdigit() for line in lines)  # no timestamp: the journal adds its own


async def test_json_log_format(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> None:
    config = write_config(
        tmp_path,
        {
            "server": {"port": str(free_port()), "log_format": "json"},
            "upstream": {"url": upstream.url},
            "repository": {"path": "repo"},
            "context": {"state_dir": "state"},
        },
    )
    log = tmp_path / "json.log"
    async with ProxyProcess(config, log) as service:
        assert await service.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(record["message"].startswith("listening on") for record in records)


async def test_a_port_in_use_exits_1_with_one_line(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            {
                "server": {"port": str(port)},
                "upstream": {"url": upstream.url},
                "repository": {"path": "repo"},
                "context": {"state_dir": "state"},
            },
        )
        result = await asyncio.to_thread(run_cli, "serve", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"scout-diff-cache: cannot serve on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("user", [False, True])
def test_the_printed_units_pass_systemd_analyze_verify(config_file: Path, tmp_path: Path, user: bool) -> None:
    args = ["systemd-unit", "--config", str(config_file)] + (["--user"] if user else [])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    service = result.stdout
    sock = run_cli(*args, "--socket").stdout
    assert "[Socket]" in sock and "ListenStream=127.0.0.1:" in sock
    assert "Type=notify" in service and "ExecReload=/bin/kill -HUP $MAINPID" in service
    assert f"ExecStart={sys.executable} -m scout_diff_cache serve --config {config_file.resolve()}" in service
    assert "WatchdogSec=" in service and "Restart=on-failure" in service
    assert ("User=" in service) is not user and ("ProtectSystem=strict" in service) is not user
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here; the unit text was checked above")
    units = tmp_path / "units"
    units.mkdir()
    (units / "scout-diff-cache.service").write_text(service)
    (units / "scout-diff-cache.socket").write_text(sock)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        [
            "systemd-analyze",
            *(["--user"] if user else []),
            "verify",
            str(units / "scout-diff-cache.service"),
            str(units / "scout-diff-cache.socket"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_system_unit_lets_systemd_make_a_state_directory_under_var_lib(tmp_path: Path, git_repo: GitRepo) -> None:
    config = write_config(
        tmp_path, {"repository": {"path": "repo"}, "context": {"state_dir": "/var/lib/scout-diff-cache"}}
    )
    unit = run_cli("systemd-unit", "--config", str(config)).stdout
    assert "StateDirectory=scout-diff-cache" in unit and "ReadWritePaths" not in unit


def test_every_command_has_help_and_usage_errors_exit_2() -> None:
    for command in ("serve", "check-config", "inspect", "rebase", "systemd-unit"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and f"usage: scout-diff-cache {command}" in result.stdout
    wrong = run_cli("inspect", "--show", "everything")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_systemd_unit_needs_a_config_file(git_repo: GitRepo) -> None:
    result = run_cli("systemd-unit", cwd=git_repo.path)
    assert result.returncode == 2 and "needs a config file" in result.stderr


class Service:
    """The proxy process with a notify socket and an HTTP client, for the reload tests."""

    def __init__(self, config: Path, tmp_path: Path, port: int) -> None:
        self.port = port
        self.notify = NotifySocket(str(tmp_path / "notify"))
        self.log = tmp_path / "service.log"
        self.process = ProxyProcess(config, self.log, port=port, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})

    async def __aenter__(self) -> Service:
        try:
            await self.process.start(wait=False)
            await self.notify.wait_for("READY=1")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.process.running:
                await self.process.stop()
        finally:
            self.notify.close()

    async def reload(self) -> tuple[str, str]:
        """SIGHUP, then the RELOADING=1 and the READY=1 that follows it."""
        seen = len(self.notify.messages)
        self.process.send_signal(signal.SIGHUP)
        for _ in range(600):
            fresh = [message for _, message in self.notify.messages[seen:]]
            reloading = [m for m in fresh if "RELOADING=1" in m.split("\n")]
            if reloading:
                after = fresh[fresh.index(reloading[0]) + 1 :]
                ready = [m for m in after if "READY=1" in m.split("\n")]
                if ready:
                    return reloading[0], ready[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no RELOADING/READY pair: {self.notify.messages[seen:]}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def service_config(tmp_path: Path, port: int, upstream_url: str, repo: str = "repo", level: str = "info") -> Path:
    return write_config(
        tmp_path,
        {
            "server": {"port": str(port), "log_level": level},
            "upstream": {"url": upstream_url},
            "repository": {"path": repo},
            "context": {"state_dir": "state"},
        },
    )


async def test_sighup_applies_a_new_upstream_without_dropping_a_stream(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, make_upstream: UpstreamFactory
) -> None:
    async def slow(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return await answer_stream(request, fake)

    upstream.behaviour = slow
    second = await make_upstream()
    port = free_port()
    config = service_config(tmp_path, port, upstream.url)
    async with Service(config, tmp_path, port) as service, ClientSession() as session:
        streaming = asyncio.ensure_future(session.post(service.url("/v1/chat/completions"), json=chat(stream=True)))
        while not upstream.asked:
            await asyncio.sleep(0.02)
        service_config(tmp_path, port, second.url, level="debug")
        reloading, ready = await service.reload()
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M)
        assert "STATUS=serving " in ready
        response = await streaming
        assert (await response.text()).endswith("data: [DONE]\n\n")  # the stream in flight finished
        async with session.post(service.url("/v1/chat/completions"), json=chat()) as answer:
            assert answer.status == 200
        assert len(second.asked) == 1 and len(upstream.asked) == 1
    assert f"reloaded {config}" in service.log.read_text()


async def test_sighup_with_a_bad_file_keeps_the_running_configuration(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream
) -> None:
    port = free_port()
    config = service_config(tmp_path, port, upstream.url)
    async with Service(config, tmp_path, port) as service, ClientSession() as session:
        config.write_text(config.read_text().replace(f"port = {port}", "port = not-a-port"))
        await service.reload()
        async with session.post(service.url("/v1/chat/completions"), json=chat()) as answer:
            assert answer.status == 200
        assert len(upstream.asked) == 1
    log = service.log.read_text()
    assert "reload refused, the running configuration stays in force" in log and "[server] port = 'not-a-port'" in log


async def test_sighup_with_a_new_repository_builds_its_snapshot_then_switches(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream
) -> None:
    other = GitRepo(tmp_path / "other")
    other.write("other.py", "print('the other repository')\n")
    other.commit("other")
    port = free_port()
    config = service_config(tmp_path, port, upstream.url)
    async with Service(config, tmp_path, port) as service, ClientSession() as session:
        service_config(tmp_path, port, upstream.url, repo="other")
        await service.reload()
        async with session.post(service.url("/v1/chat/completions"), json=chat()) as answer:
            assert answer.headers["X-Scout-Snapshot-Commit"] == other.head()
    snapshot = upstream.seen[-1].json["messages"][0]["content"]
    assert "the other repository" in snapshot and "return 'hello'" not in snapshot
    assert "changed: it takes effect at the next restart" not in service.log.read_text()


async def test_sighup_rereads_the_client_keys(tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream) -> None:
    keys = tmp_path / "clients.keys"
    keys.write_text("old-key\n")
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "server": {"port": str(port), "api_keys_file": str(keys)},
            "upstream": {"url": upstream.url},
            "repository": {"path": "repo"},
            "context": {"state_dir": "state"},
        },
    )
    async with Service(config, tmp_path, port) as service, ClientSession() as session:

        async def status_with(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            async with session.post(service.url("/v1/chat/completions"), json=chat(), headers=headers) as answer:
                return answer.status

        assert (await status_with("old-key"), await status_with("new-key")) == (200, 401)
        keys.write_text("new-key\n")
        await service.reload()
        assert (await status_with("old-key"), await status_with("new-key")) == (401, 200)
    assert "old-key" not in service.log.read_text() and "new-key" not in service.log.read_text()


@pytest.mark.parametrize("user", [False, True])
def test_the_template_unit_serves_one_repository_per_instance(tmp_path: Path, git_repo: GitRepo, user: bool) -> None:
    result = run_cli("systemd-unit", "--template", *(["--user"] if user else []), cwd=git_repo.path)
    assert result.returncode == 0, result.stderr
    template = result.stdout
    assert f"ExecStart={sys.executable} -m scout_diff_cache serve --config %E/scout-diff-cache/%i.ini" in template
    assert ("StateDirectory=scout-diff-cache/%i" in template) is not user and "User=" not in template.replace(
        "# User=", ""
    )
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here; the unit text was checked above")
    units = tmp_path / "units"
    units.mkdir()
    (units / "scout-diff-cache@.service").write_text(template)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", *(["--user"] if user else []), "verify", str(units / "scout-diff-cache@project.service")],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
