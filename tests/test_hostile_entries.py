"""No single entry of the work tree or of a tree can fail a request: each is that file's stub, saying why.

A corpus of entries that trip naive readers (names that are not UTF-8 or hold control characters
and newlines, a FIFO, a socket and a directory where files were, a clean filter that refuses, blobs
missing from or damaged in the object database, a dangling symlink), committed, in a commit the
diff carries, staged, unstaged and untracked: through the proxy every request answers 200, the
reconstruction parser rebuilds everything else exactly, and each of them is a stub with its reason,
logged and counted once. Permission denied needs a process without CAP_DAC_OVERRIDE (the tests run
as root): the real process is started under `setpriv` with it dropped. A device, and races between
a file's lstat and its read, are tested on the reader itself: the races are made deterministic by
doing them inside the `os.open` it calls.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pygit2
import pytest
from aiohttp.test_utils import TestClient

from scout_diff_cache.git.content import Side, worktree_side
from scout_diff_cache.git.repository import ContentRules
from scout_diff_cache.git.workers import POOL_MIN_ENTRIES
from scout_diff_cache.patterns import compile_patterns

from reconstruction import File, Hidden, State, check, check_conversation, parse_diff, parse_snapshot
from support import (
    SIGNATURE,
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    ProxyProcess,
    chat,
    free_port,
    is_warmup,
    run_cli,
    write_config,
)

LATIN = os.fsdecode(b"caf\xe9.txt")  # as old archives and Windows tools leave
CONTROL = "ctl\x01\x1b[31m red\x7f.txt"
NEWLINE = "new\nline.txt"
BOTH = os.fsdecode(b"bad \xff\nand a newline.txt")
FORGED = '"quoted" [1 lines] ===.txt'
NAMES = (LATIN, CONTROL, NEWLINE, BOTH, FORGED)

#: What the messages show of each hostile entry once the work tree is hostile too.
STUBS = {
    "x.crlf": Hidden("file", "unreadable (clean filter failed)"),
    "new.crlf": Hidden("file", "unreadable (clean filter failed)"),
    "to-fifo.txt": Hidden("file", "unreadable (fifo)"),
    "staged-fifo.txt": Hidden("file", "unreadable (fifo)"),
    "to-socket.txt": Hidden("file", "unreadable (socket)"),
    "later-gone.txt": Hidden("file", "unreadable (object missing)"),
}


def text(path: str) -> str:
    """A path as the messages spell it: bytes that are not UTF-8 as U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def drop_object(repo: GitRepo, path: str, damage: bool = False) -> None:
    """Remove HEAD's blob of `path` from the object database, or write garbage in its place."""
    oid = str(repo.repo.head.peel(pygit2.Tree)[path].id)
    loose = repo.path / ".git" / "objects" / oid[:2] / oid[2:]
    loose.chmod(0o644)
    if damage:
        loose.write_bytes(b"not a zlib stream")
    else:
        loose.unlink()


def make_socket(path: Path) -> None:
    """A Unix socket at `path` (bound by a short relative name: the full path may be too long)."""
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path.name)
    finally:
        os.chdir(cwd)


LATER = {os.fsdecode(b"l\xe4ter \x02.txt"): "committed later\n", "later-gone.txt": "its blob will be lost\n"}


def committed_corpus(repo: GitRepo) -> str:
    """The snapshot's commit (hostile names, files that will turn hostile, two blobs then lost), and
    the id of a commit made on it for later: made now, since no commit can be made on a lost blob."""
    for name in NAMES:
        repo.write(name, f"{text(name)}\ncommitted\n")
    for name in ("to-fifo.txt", "to-socket.txt", "to-dir.txt", "gone.txt", "damaged.txt", "vanish.txt"):
        repo.write(name, f"{name}\n")
    repo.write(".gitattributes", "*.crlf text\n")
    repo.write("x.crlf", "one\ntwo\n")
    (repo.path / "dangling").symlink_to("nowhere/at/all")
    base = repo.commit("hostile names")
    index = repo.repo.index
    for name, content in LATER.items():
        repo.write(name, content)
        index.add(name)
    later = repo.repo.create_commit(None, SIGNATURE, SIGNATURE, "later", index.write_tree(), [pygit2.Oid(hex=base)])
    index.read_tree(repo.repo[base].peel(pygit2.Tree))
    index.write()
    for name in LATER:
        (repo.path / name).unlink()
    drop_object(repo, "gone.txt")
    drop_object(repo, "damaged.txt", damage=True)
    return str(later)


def later_corpus(repo: GitRepo, later: str) -> None:
    """The commit the diff carries (a hostile name, a blob then lost), then a hostile work tree."""
    repo.repo.head.set_target(pygit2.Oid(hex=later))
    repo.repo.index.read_tree(repo.repo[later].peel(pygit2.Tree))
    repo.repo.index.write()
    for name, content in LATER.items():
        repo.write(name, content)
    drop_object(repo, "later-gone.txt")
    repo.repo.config["core.safecrlf"] = True  # CRLF that checkout would not give back: git refuses to add it
    repo.write(os.fsdecode(b"st\xe4ged.txt"), "staged\n")
    repo.write("staged-fifo.txt", "staged, then a FIFO\n")
    repo.stage(os.fsdecode(b"st\xe4ged.txt"), "staged-fifo.txt")
    for name in NAMES:
        repo.write(name, f"{text(name)}\nedited\n")
    repo.write("gone.txt", "its old blob is missing\n")
    repo.write("damaged.txt", "its old blob is damaged\n")
    repo.write("x.crlf", b"one\r\ntwo\n")
    repo.write("new.crlf", b"new\r\n")
    repo.write(os.fsdecode(b"untr\xfccked\n.txt"), "untracked\n")
    for name in ("to-fifo.txt", "staged-fifo.txt", "to-dir.txt", "vanish.txt", "to-socket.txt"):
        (repo.path / name).unlink()
    os.mkfifo(repo.path / "to-fifo.txt")
    os.mkfifo(repo.path / "staged-fifo.txt")
    os.mkfifo(repo.path / "untracked-fifo")  # untracked: git lists none, nor do we
    make_socket(repo.path / "to-socket.txt")
    make_socket(repo.path / "untracked-socket")
    repo.write("to-dir.txt/inside.txt", "a directory where a file was\n")


class Asker:
    """Questions through the proxy, each checked with the reconstruction parser; a conversation goes on beside."""

    def __init__(self, client: TestClient, upstream: FakeUpstream, repo: Path) -> None:
        self.client, self.upstream, self.repo = client, upstream, repo
        self.history: list[dict[str, str]] = []

    async def check(self) -> tuple[str, str, State]:
        asked = len(self.history)
        snapshot, diff, *_ = await self.ask({"role": "user", "content": f"A new question, number {asked}."})
        state = check(snapshot, diff, self.repo)
        self.history.append({"role": "user", "content": f"Turn {asked}."})
        check_conversation(await self.sent(*self.history), self.repo)
        self.history.append({"role": "assistant", "content": f"Answer {asked}."})
        return snapshot, diff, state

    async def ask(self, *messages: dict[str, str]) -> list[str]:
        return [str(message["content"]) for message in await self.sent(*messages)]

    async def sent(self, *messages: dict[str, str]) -> list[dict[str, Any]]:
        response = await self.client.post("/v1/chat/completions", json=chat(*messages))
        assert response.status == 200, await response.text()
        asked = [seen.json for seen in self.upstream.seen if not is_warmup(seen.json)]
        return list(asked[-1]["messages"])


def unreadable_counts(metrics: str) -> dict[str, str]:
    prefix = 'scout_unreadable_entries_total{reason="'
    return dict(line[len(prefix) :].split('"} ') for line in metrics.splitlines() if line.startswith(prefix))


async def test_hostile_entries_are_stubs_and_every_request_answers(
    git_repo: GitRepo,
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "scout_diff_cache")
    later = committed_corpus(git_repo)
    asker = Asker(await make_proxy(context={"rebase": "manual"}), upstream, git_repo.path)
    snapshot, _, state = await asker.check()
    assert parse_snapshot(snapshot).not_included == {"gone.txt": "unreadable", "damaged.txt": "unreadable"}
    assert (
        "unreadable: gone.txt (object missing)" in snapshot
        and "unreadable: damaged.txt (object unreadable)" in snapshot
    )
    assert {name: state[text(name)] for name in NAMES} == {
        name: File("file", f"{text(name)}\ncommitted\n", False) for name in NAMES
    }
    assert state["dangling"] == File("symlink", "nowhere/at/all", False)

    later_corpus(git_repo, later)
    _, diff, state = await asker.check()
    for path, stub in STUBS.items():
        assert state[path] == stub, path
    assert {name: state[text(name)] for name in NAMES} == {
        name: File("file", f"{text(name)}\nedited\n", False) for name in NAMES
    }
    wholes = {change.path: change.details for group in parse_diff(diff).groups for change in group.changes}
    assert wholes["gone.txt"] == wholes["damaged.txt"] == ("whole text",)  # the old side was never shown
    assert state["to-dir.txt/inside.txt"] == File("file", "a directory where a file was\n", False)
    assert "to-dir.txt" not in state and "vanish.txt" not in state and "untracked-fifo" not in state

    await asker.check()  # again: nothing more is logged or counted
    counts = unreadable_counts(await (await asker.client.get("/metrics")).text())
    assert counts == {
        "clean filter failed": "2",
        "fifo": "2",
        "object missing": "2",
        "object unreadable": "1",
        "socket": "1",
    }
    warnings = [record.getMessage() for record in caplog.records if "cannot be read" in record.getMessage()]
    assert len(warnings) == 8 and len(set(warnings)) == 8, warnings

    config = tmp_path / "scout.ini"
    report = run_cli("inspect", "--config", str(config))
    assert report.returncode == 0, report.stderr
    assert "unreadable             to-fifo.txt (fifo; in the diff)" in report.stdout
    shown = run_cli("inspect", "--config", str(config), "--show", "diff")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == diff


# --- permission denied: the real process without CAP_DAC_OVERRIDE ---------------------------------

#: Runs a command as root without the capabilities that let root read any file.
SETPRIV = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
)


def without_read_override() -> tuple[str, ...]:
    """The wrapper that makes a mode-000 file unreadable to a child process (none when not root)."""
    if os.geteuid() != 0:
        return ()
    try:
        probe = subprocess.run([*SETPRIV, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("setpriv is needed to drop CAP_DAC_OVERRIDE: as root, no file is unreadable")
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.decode(errors='replace')}")
    return SETPRIV


@pytest.fixture
def locked(git_repo: GitRepo) -> Iterator[GitRepo]:
    """Files and a directory nobody may read: tracked (one of them unchanged), staged and untracked."""
    git_repo.write("locked.txt", "readable once\n")
    git_repo.write("unchanged.txt", "unchanged: libgit2 must read it to tell (chmod changed its ctime)\n")
    git_repo.write("sealed/inner.txt", "in a directory nobody may search\n")
    git_repo.commit("files that will be locked")
    git_repo.write("locked.txt", "and now locked\n")
    git_repo.write("staged-locked.txt", "staged, then locked\n")
    git_repo.stage("staged-locked.txt")
    git_repo.write("untracked-locked.txt", "untracked and locked\n")
    git_repo.write("sealed-untracked/inner.txt", "untracked in a sealed directory\n")
    names = ("locked.txt", "unchanged.txt", "staged-locked.txt", "untracked-locked.txt", "sealed", "sealed-untracked")
    for name in names:
        (git_repo.path / name).chmod(0)
    yield git_repo
    for name in names:
        (git_repo.path / name).chmod(0o755)


async def test_files_that_cannot_be_opened_are_stubs_in_the_real_process(tmp_path: Path, locked: GitRepo) -> None:
    wrapper = without_read_override()
    upstream = FakeUpstream()
    runner = aiohttp.web.AppRunner(upstream.app())
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    config = write_config(
        tmp_path,
        {
            "server": {"port": str(free_port())},
            "upstream": {"url": f"http://127.0.0.1:{port}/v1"},
            "repository": {"path": str(locked.path)},
            "context": {"state_dir": str(tmp_path / "state"), "usage": "upstream"},
        },
    )
    try:
        async with (
            ProxyProcess(config, tmp_path / "proxy.log", wrapper=wrapper) as proxy,
            aiohttp.ClientSession() as session,
        ):
            for _ in range(2):
                async with session.post(f"{proxy.url}/v1/chat/completions", json=chat()) as response:
                    assert response.status == 200, await response.text()
            snapshot, diff = (message["content"] for message in upstream.asked[-1].json["messages"][:2])
            # git lists nothing in an untracked directory it cannot search, nor do we (the oracle, root, can)
            state = check(snapshot, diff, locked.path, lambda path: path.startswith("sealed-untracked/"))
            async with session.get(f"{proxy.url}/metrics") as response:
                counts = unreadable_counts(await response.text())
        log = proxy.log_tail(20000)
    finally:
        await runner.cleanup()
    denied = Hidden("file", "unreadable (permission denied)")
    paths = ("locked.txt", "unchanged.txt", "staged-locked.txt", "untracked-locked.txt", "sealed/inner.txt")
    assert {path: state[path] for path in paths} == dict.fromkeys(paths, denied)
    assert counts == {"permission denied": str(len(paths))}
    assert sum("cannot be read (permission denied)" in line for line in log.splitlines()) == len(paths), log
    inspect = subprocess.run(
        [*wrapper, sys.executable, "-m", "scout_diff_cache", "inspect", "--config", str(config), "--show", "diff"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout == diff


# --- races between a file's lstat and its read ------------------------------------------------------

RULES = ContentRules(compile_patterns([]), 1 << 20)


def read_racing(
    repo: GitRepo, name: str, race: Callable[[Path], object], monkeypatch: pytest.MonkeyPatch
) -> Side | None:
    """`worktree_side` of `name`, with `race` done to the file between its lstat and its opening."""
    real_open = os.open

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(os.fsdecode(path)) == repo.path / name:
            race(repo.path / name)
        return real_open(path, flags, *args, **kwargs)

    repo.write(name, "some text\n" * 10)
    monkeypatch.setattr(os, "open", racing_open)
    return worktree_side(repo.repo, name, RULES, None)


def fifo_instead(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def test_a_file_replaced_by_a_fifo_while_read_is_a_stub_and_never_waited_on(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = git_repo.path / "racing.txt"
    rescue = threading.Timer(3.0, lambda: os.close(os.open(fifo, os.O_RDWR)))  # a writer: a blocked read ends
    rescue.start()
    started = time.monotonic()
    try:
        side = read_racing(git_repo, "racing.txt", fifo_instead, monkeypatch)
    finally:
        rescue.cancel()
    assert time.monotonic() - started < 3.0
    assert side is not None and side.unreadable == "fifo" and side.data is None


@pytest.mark.parametrize(
    ("race", "expected"),
    [
        (lambda path: path.unlink(), None),
        (lambda path: (path.unlink(), path.mkdir()), "EISDIR"),
        (lambda path: (path.unlink(), path.symlink_to("elsewhere")), "ELOOP"),
        (lambda path: os.truncate(path, 4), b"some"),
    ],
    ids=["vanished", "a-directory", "a-symlink", "truncated"],
)
def test_a_file_changed_between_its_lstat_and_its_read_is_what_was_read_or_a_stub(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch, race: Callable[[Path], object], expected: str | bytes | None
) -> None:
    side = read_racing(git_repo, "racing.txt", race, monkeypatch)
    if expected is None:
        assert side is None  # gone: absent, as git would say
    elif isinstance(expected, bytes):
        assert side is not None and side.data == expected and side.unreadable is None
    else:
        assert side is not None and side.unreadable == expected and side.data is None


def test_a_device_where_a_file_was_is_a_stub_and_never_opened(
    git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = git_repo.path / "src/util.py"
    device.unlink()
    try:
        os.mknod(device, stat.S_IFCHR | 0o644, os.makedev(1, 3))  # /dev/null's
    except PermissionError:
        pytest.skip("making a device needs CAP_MKNOD")
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        assert Path(os.fsdecode(path)) != device, "a device was opened"
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    side = worktree_side(git_repo.repo, "src/util.py", RULES, 0o100644)
    assert side is not None and side.unreadable == "device" and side.data is None


def test_a_blob_missing_from_the_database_is_a_stub_when_worker_processes_render_the_snapshot(
    git_repo: GitRepo, tmp_path: Path
) -> None:
    for number in range(POOL_MIN_ENTRIES):
        git_repo.write(f"many/{number}.txt", f"{number}\n")
    git_repo.write("lost.txt", "soon lost\n")
    git_repo.commit("enough files for the worker processes, and a blob soon lost")
    drop_object(git_repo, "lost.txt")
    config = write_config(tmp_path, {"repository": {"path": "repo"}, "context": {"state_dir": "state"}})
    shown = run_cli("inspect", "--config", str(config), "--show", "snapshot")
    assert shown.returncode == 0, shown.stderr
    snapshot = parse_snapshot(shown.stdout)
    assert snapshot.not_included == {"lost.txt": "unreadable"} and len(snapshot.files) > POOL_MIN_ENTRIES


async def test_an_entry_that_stays_unreadable_adds_nothing_to_a_conversation(
    git_repo: GitRepo, make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    (git_repo.path / "src/util.py").unlink()
    os.mkfifo(git_repo.path / "src/util.py")
    asker = Asker(await make_proxy(), upstream, git_repo.path)
    for _ in range(3):
        await asker.check()
    turns = [str(message["content"]) for message in await asker.sent(*asker.history)]
    assert not any(turn.startswith("# Work tree changes") for turn in turns), turns
    git_repo.write("src/app.py", "edited\n")
    await asker.check()
    turns = [str(message["content"]) for message in await asker.sent(*asker.history)]
    [change] = [turn for turn in turns if turn.startswith("# Work tree changes")]
    assert "src/app.py" in change and "src/util.py" not in change
