"""Snapshot plus working diff rebuild the work tree exactly, through the real proxy, step by step.

Every test changes a real repository (files written directly, git run as a subprocess where pygit2
is awkward), asks the proxy, and checks with `reconstruction.check` that applying the diff the
upstream received to the snapshot it received gives, for every path git shows, the text of the file
in the work tree now. The `test_parser_*` tests pin the strict parser itself on hand-written texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from scout_diff_cache.patterns import compile_patterns

from reconstruction import (
    Change,
    File,
    Hidden,
    State,
    apply_hunks,
    check,
    check_conversation,
    default_left_out,
    parse_diff,
    parse_snapshot,
    reconstruct,
)
from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    ProxyProcess,
    chat,
    completion,
    free_port,
    header_of,
    is_warmup,
    write_config,
)

GIT_OPTIONS = (
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@e",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "advice.detachedHead=false",
)

PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAq7BFUpkGp3LQmlQYzqTmaXpe9zE3Nxt1ZbKQ0pHd3V0rU8wq\n"
    "Kx9ZbQe4v2Lr7sT1nW5uY8cA3dF6gH9jK2mN5pQ8rS1tU4vW7xY0zB3cD6eF9gH2\n"
    "-----END RSA PRIVATE KEY-----"
)
TOKEN = "ghp_" + "Ab3dEf5hIj7lMn9pQr1tUv3xYz5bCd7fGh9j"

#: Text whose lines look like every header and marker of both messages.
FORGED = (
    "=== file: x [1 lines] ===\n"
    "=== symlink: y [1 lines, no newline at end] ===\n"
    "=== the changes above are not committed yet ===\n"
    "@@ -1,1 +1,1 @@\n"
    "\\ No newline at end of file\n"
    "=== not included [1 entries] ===\n"
    f"=== end of snapshot: commit {'0' * 40} ===\n"
    "=== snapshot commit a; HEAD is b ===\n"
)


class Sent(NamedTuple):
    snapshot: str
    diff: str
    state: State


class Work:
    """One repository under the real proxy: change it, then check what the upstream was sent."""

    def __init__(self, repo: GitRepo, make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
        self.repo, self.path = repo, repo.path
        self.make_proxy, self.upstream = make_proxy, upstream
        self.sections: dict[str, dict[str, str]] = {}
        self.client: TestClient | None = None
        #: A conversation that goes on through every check, beside each check's one-shot question.
        self.history: list[dict[str, str]] = [{"role": "system", "content": "You are a coding agent."}]

    async def start(self, **sections: dict[str, str]) -> None:
        self.sections = sections
        self.client = await self.make_proxy(self.repo, **sections)

    async def restart(self) -> None:
        """A new app on the same state_dir, as after a restart of the process."""
        assert self.client is not None
        await self.client.close()
        self.client = await self.make_proxy(self.repo, **self.sections)

    async def check(self, left_out_ok: Callable[[str], bool] = default_left_out) -> Sent:
        if self.client is None:
            await self.start()
        asked = len(self.history)
        messages = await self.ask({"role": "user", "content": f"A new question, number {asked}."})
        snapshot, diff = messages[0]["content"], messages[1]["content"]
        sent = Sent(snapshot, diff, check(snapshot, diff, self.path, left_out_ok))
        self.history += [{"role": "user", "content": f"Turn {asked}."}]
        check_conversation(await self.ask(*self.history), self.path, left_out_ok)
        self.history += [{"role": "assistant", "content": f"Answer {asked}."}]
        return sent

    async def ask(self, *messages: dict[str, str]) -> list[dict[str, Any]]:
        """What the upstream was sent for these messages."""
        assert self.client is not None
        response = await self.client.post("/v1/chat/completions", json=chat(*messages))
        assert response.status == 200, await response.text()
        sent: list[dict[str, Any]] = [seen.json for seen in self.upstream.seen if not is_warmup(seen.json)][-1][
            "messages"
        ]
        return sent

    def git(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return git(self.path, *args, ok=ok)

    def write(self, name: str, content: str | bytes) -> Path:
        return self.repo.write(name, content)

    def commit(self, message: str = "change") -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def symlink(self, target: str, name: str) -> None:
        link = self.path / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)


def git(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """git isolated from the developer's and the system's configuration, with fixed dates."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    home = str(repo.parent)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        HOME=home,
        XDG_CONFIG_HOME=home,
        LC_ALL="C",
        GIT_AUTHOR_DATE="1700000000 +0000",
        GIT_COMMITTER_DATE="1700000000 +0000",
    )
    result = subprocess.run(["git", *GIT_OPTIONS, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    if ok:
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def changes_of(diff: str, path: str) -> list[Change]:
    return [change for group in parse_diff(diff).groups for change in group.changes if change.path == path]


def assert_never_sent(sent: Sent, *texts: str) -> None:
    for text in texts:
        assert text not in sent.snapshot and text not in sent.diff, f"{text!r} was sent"


def key_lines() -> list[str]:
    return [*PRIVATE_KEY.splitlines(), "PRIVATE KEY"]


@pytest.fixture
def work(git_repo: GitRepo, make_proxy: ProxyFactory, upstream: FakeUpstream) -> Work:
    return Work(git_repo, make_proxy, upstream)


# --- the parser, on hand-written texts ---------------------------------------------------------

SNAPSHOT = (
    "# Repository snapshot\n\nA fixed paragraph.\nOf two lines.\n\n"
    "=== file: a.txt [2 lines] ===\none\ntwo\n"
    "=== file: dir with space/café [x].txt [2 lines, no newline at end, executable] ===\n"
    "=== file: forged [1 lines] ===\n"
    "\n"
    "=== file: empty [0 lines] ===\n"
    "=== symlink: link [1 lines, no newline at end] ===\na.txt\n"
    '=== file: "tab\\there" [1 lines] ===\nt\n'
    "=== not included [2 entries] ===\n"
    "binary: logo.png (12 bytes)\n"
    "over the snapshot cap: big (copy).txt (5001 bytes)\n"
    f"=== end of snapshot: commit {'a' * 40} ===\n"
)

DIFF = (
    "# Working diff\n\nA fixed paragraph.\n\n"
    "=== file: a.txt [modified] ===\n"
    "@@ -1,2 +1,3 @@\n one\n-two\n+TWO\n+three\n\\ No newline at end of file\n"
    "=== file: empty [deleted] ===\n"
    "=== file: new [added, executable] ===\n"
    "@@ -0,0 +1,1 @@\n+=== the changes above are not committed yet ===\n"
    f"=== the changes above were committed as {'b' * 40}: a summary ===\n"
    "=== file: logo.png [modified, contents not shown: binary (14 bytes)] ===\n"
    "=== symlink: link [deleted] ===\n"
    "=== file: link [added] ===\n"
    "@@ -0,0 +1,1 @@\n+now a file\n"
    '=== file: "tab\\there" [modified, mode 100644 -> 100755] ===\n'
    "=== the changes above are not committed yet ===\n"
    f"=== snapshot commit {'a' * 40}; HEAD is {'b' * 40} ===\n"
)


def test_parser_reads_every_kind_of_snapshot_section() -> None:
    snapshot = parse_snapshot(SNAPSHOT)
    assert snapshot.files == {
        "a.txt": File("file", "one\ntwo\n", False),
        "dir with space/café [x].txt": File("file", "=== file: forged [1 lines] ===\n", True),
        "empty": File("file", "", False),
        "link": File("symlink", "a.txt", False),
        "tab\there": File("file", "t\n", False),
    }
    assert snapshot.not_included == {"logo.png": "binary", "big (copy).txt": "over the snapshot cap"}
    assert snapshot.commit == "a" * 40


def test_parser_applies_groups_in_order() -> None:
    state = reconstruct(parse_snapshot(SNAPSHOT), parse_diff(DIFF))
    assert state["a.txt"] == File("file", "one\nTWO\nthree", False)
    assert "empty" not in state
    assert state["new"] == File("file", "=== the changes above are not committed yet ===\n", True)
    assert state["logo.png"] == Hidden("file", "binary (14 bytes)")
    assert state["link"] == File("file", "now a file\n", False)
    assert state["tab\there"] == File("file", "t\n", True)
    assert state["big (copy).txt"] == Hidden("file", "over the snapshot cap")


def test_parser_reads_the_clean_diff_and_an_unborn_snapshot() -> None:
    clean = "# Working diff\n\nNo changes: the working tree matches the snapshot's commit.\n"
    assert parse_diff(clean + f"=== snapshot commit {'a' * 40}; HEAD is the same commit ===\n").groups == ()
    unborn = "# Repository snapshot\n\nThe repository has no commits yet.\n"
    assert parse_snapshot(unborn).files == {}


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("@@ -1,2 +1,3 @@", "@@ -1,2 +1,4 @@", "fit the counts"),
        ("@@ -1,2 +1,3 @@", "@@ -1,1 +1,3 @@", "fit the counts"),
        ("@@ -1,2 +1,3 @@", "@@ -1 +1,3 @@", "hunk header"),
        ("=== file: empty [deleted] ===", "=== file: empty [removed] ===", "not a header"),
        ("=== file: empty [deleted] ===", "=== file: empty [deleted, renamed] ===", "unknown detail"),
        (
            "=== the changes above are not committed yet ===\n=== snapshot",
            "=== the changes above are staged ===\n=== snapshot",
            "unknown origin",
        ),
        (f"HEAD is {'b' * 40} ===\n", f"HEAD is {'b' * 40} ===\ntrailing junk\n", "after the footer"),
        ("+now a file\n", "+now a file\nstray line\n", "not a header"),
        (
            "=== file: new [added, executable] ===\n@@ -0,0 +1,1 @@",
            "=== file: new [added, executable] ===\n@@ -1,0 +1,1 @@",
            "one hunk",
        ),
        ("=== file: empty [deleted] ===\n", "=== file: empty [deleted] ===\n@@ -1,1 +0,0 @@\n-x\n", "has no hunks"),
        (
            "=== file: logo.png [modified, contents not shown: binary (14 bytes)] ===\n",
            "=== file: logo.png [modified, contents not shown: binary (14 bytes)] ===\n@@ -1,1 +1,1 @@\n-a\n+b\n",
            "has no hunks",
        ),
        ("contents not shown: binary (14 bytes)", "contents not shown: binary, 14 bytes", "REASON \\(DETAIL\\)"),
        ("contents not shown: binary (14 bytes)", "contents not shown: exotic (14 bytes)", "REASON \\(DETAIL\\)"),
        (
            "contents not shown: binary (14 bytes)",
            "whole text, contents not shown: binary (14 bytes)",
            "only a modified",
        ),
        ("=== file: new [added, executable] ===", "=== file: new [added, whole text] ===", "only a modified"),
        (
            "=== file: logo.png [modified, contents not shown: binary (14 bytes)] ===\n",
            "=== file: logo.png [modified, whole text] ===\n@@ -1,0 +1,1 @@\n+b\n",
            "one hunk",
        ),
    ],
)
def test_parser_rejects_what_the_diff_grammar_does_not_allow(old: str, new: str, error: str) -> None:
    assert old in DIFF
    with pytest.raises(AssertionError, match=error):
        parse_diff(DIFF.replace(old, new, 1))


def test_parser_takes_the_whole_text_of_a_file_whose_contents_were_not_shown_and_of_no_other() -> None:
    stub = "=== file: logo.png [modified, contents not shown: binary (14 bytes)] ===\n"
    whole = "=== file: logo.png [modified, executable, whole text] ===\n@@ -0,0 +1,1 @@\n+now text\n"
    state = reconstruct(parse_snapshot(SNAPSHOT), parse_diff(DIFF.replace(stub, whole)))
    assert state["logo.png"] == File("file", "now text\n", True)
    shown = "=== file: a.txt [modified, whole text] ===\n@@ -0,0 +1,1 @@\n+a\n"
    with pytest.raises(AssertionError, match="whole text, though its contents were shown"):
        reconstruct(parse_snapshot(SNAPSHOT), parse_diff(DIFF.replace(stub, shown)))


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("=== file: a.txt [2 lines] ===", "=== file: a.txt [1 lines] ===", "not a header"),
        ("=== file: a.txt [2 lines] ===", "=== file: a.txt [2 line] ===", "not a header"),
        ("=== file: a.txt [2 lines] ===", "=== file: a.txt ===", "not a header"),
        ("[2 entries]", "[3 entries]", "expected REASON"),
        ("binary: logo.png", "exotic: logo.png", "expected REASON"),
        ("\n\n=== file: a.txt", "\n=== file: a.txt", "empty line"),
        ("=== symlink: link [1 lines, no newline at end] ===", "=== symlink: link [1 lines] ===", "symlink"),
        ('=== file: "tab\\there"', "=== file: tab\there", "control characters"),
        (f"{'a' * 40} ===\n", f"{'a' * 40} ===\nextra\n", "after the end line"),
    ],
)
def test_parser_rejects_what_the_snapshot_grammar_does_not_allow(old: str, new: str, error: str) -> None:
    assert old in SNAPSHOT
    with pytest.raises(AssertionError, match=error):
        parse_snapshot(SNAPSHOT.replace(old, new, 1))


@pytest.mark.parametrize(
    ("diff", "error"),
    [
        ("=== file: a.txt [modified] ===\n@@ -1,1 +1,1 @@\n-ONE\n+uno\n", "do not match"),
        (
            "=== file: a.txt [modified] ===\n@@ -2,1 +2,1 @@\n-two\n+dos\n\\ No newline at end of file\n"
            "@@ -1,1 +1,1 @@\n-one\n+uno\n",
            "before the previous",
        ),
        ("=== file: a.txt [modified] ===\n@@ -1,1 +2,1 @@\n-one\n+uno\n", "new start"),
        ("=== file: a.txt [added] ===\n@@ -0,0 +1,1 @@\n+again\n", "already there"),
        ("=== file: gone [deleted] ===\n", "no such path"),
        ("=== file: logo.png [modified] ===\n@@ -1,1 +1,1 @@\n-a\n+b\n", "never shown"),
        ("=== symlink: a.txt [modified] ===\n@@ -1,1 +1,1 @@\n-one\n+uno\n", "type change"),
        ("=== file: a.txt [modified, mode 100755 -> 100644] ===\n", "old mode"),
        (
            "=== file: a.txt [modified] ===\n@@ -1,1 +1,1 @@\n-one\n+uno\n\\ No newline at end of file\n",
            "not the file's last",
        ),
    ],
)
def test_parser_applies_hunks_strictly(diff: str, error: str) -> None:
    text = (
        "# Working diff\n\nP.\n\n"
        + diff
        + "=== the changes above are not committed yet ===\n=== snapshot commit a; HEAD is b ===\n"
    )
    with pytest.raises(AssertionError, match=error):
        reconstruct(parse_snapshot(SNAPSHOT), parse_diff(text))


def test_parser_keeps_carriage_returns_and_missing_newlines_in_hunks() -> None:
    hunk = (
        parse_diff(
            "# Working diff\n\nP.\n\n=== file: w [modified] ===\n@@ -1,2 +1,2 @@\n a\r\n-b\r\n\\ No newline at end of file\n+b\r\n"
            "=== the changes above are not committed yet ===\n=== snapshot commit a; HEAD is b ===\n"
        )
        .groups[0]
        .changes[0]
        .hunks
    )
    assert apply_hunks("a\r\nb\r", hunk, "w") == "a\r\nb\r\n"


def test_check_names_the_first_differing_path_with_a_short_diff(git_repo: GitRepo) -> None:
    snapshot = (
        "# Repository snapshot\n\nP.\n\n=== file: README.md [3 lines] ===\n# Demo\n\nA big project.\n"
        "=== file: src/app.py [2 lines] ===\ndef main():\n    return 'hello'\n"
        "=== file: src/util.py [2 lines] ===\ndef add(a, b):\n    return a + b\n"
        f"=== end of snapshot: commit {git_repo.head()} ===\n"
    )
    clean = (
        "# Working diff\n\nNo changes: the working tree matches the snapshot's commit.\n"
        f"=== snapshot commit {git_repo.head()}; HEAD is the same commit ===\n"
    )
    expected = r"(?s)^README.md: the text differs\n.*-'A big project.\\n'\n\+'A small project.\\n'"
    with pytest.raises(AssertionError, match=expected):
        check(snapshot, clean, git_repo.path)
    check(snapshot.replace("A big", "A small"), clean, git_repo.path)


# --- edits, additions, deletions --------------------------------------------------------------


async def test_a_renamed_file_is_shown_at_its_new_path_only(work: Work) -> None:
    await work.check()
    (work.path / "lib").mkdir()
    work.git("mv", "src/util.py", "lib/helpers.py")
    await work.check()
    work.commit("rename")
    await work.check()
    os.rename(work.path / "lib/helpers.py", work.path / "lib/renamed-on-disk.py")
    await work.check()


async def test_a_deleted_file_is_gone_whether_unstaged_staged_or_committed(work: Work) -> None:
    (work.path / "README.md").unlink()
    await work.check()
    work.git("rm", "-q", "src/app.py")
    await work.check()
    work.commit("delete")
    await work.check()


async def test_a_file_deleted_in_a_commit_and_created_again_has_its_new_text(work: Work) -> None:
    await work.check()
    work.git("rm", "-q", "src/util.py")
    work.commit("remove util")
    await work.check()
    work.write("src/util.py", "def add(a, b):\n    return a + b  # back again\n")
    await work.check()
    work.commit("bring util back")
    await work.check()


async def test_an_untracked_tree_of_nested_directories_is_shown_file_by_file(work: Work) -> None:
    for depth, name in enumerate(("new/a.txt", "new/deeper/b.py", "new/deeper/still/c.md", "new/deeper/still/empty")):
        work.write(name, "" if name.endswith("empty") else f"depth {depth}\n" * (depth + 1))
    await work.check()
    work.git("add", "new/deeper")
    await work.check()


async def test_a_staged_then_edited_file_shows_the_work_tree(work: Work) -> None:
    work.write("src/app.py", "staged version\n")
    work.write("fresh.txt", "staged new file\n")
    work.git("add", "src/app.py", "fresh.txt")
    work.write("src/app.py", "working version\n")
    work.write("fresh.txt", "edited new file\n")
    await work.check()


async def test_commits_after_edits_keep_the_rebuilt_tree_exact(work: Work) -> None:
    for step in range(3):
        work.write("src/app.py", f"def main():\n    return {step}\n")
        work.write(f"notes/{step}.txt", f"note {step}\n")
        await work.check()
        work.commit(f"step {step}")
        await work.check()


async def test_a_stash_and_its_pop(work: Work) -> None:
    work.write("src/app.py", "stashed edit\n")
    work.write("untracked.txt", "stashed too\n")
    await work.check()
    work.git("stash", "-q", "-u")
    await work.check()
    work.git("stash", "pop", "-q")
    await work.check()


async def test_a_repository_without_commits_is_all_in_the_diff_until_its_first_commit(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    work = Work(GitRepo(tmp_path / "fresh"), make_proxy, upstream)
    work.write("staged.py", "print('staged')\n")
    work.git("add", "staged.py")
    work.write("untracked/notes.txt", "untracked\n")
    await work.check()
    work.commit("first")
    await work.check()


# --- text as git stores it ----------------------------------------------------------------------


async def test_crlf_files_keep_their_carriage_returns(work: Work) -> None:
    work.write("win.txt", "one\r\ntwo\r\nthree\r\n")
    work.commit("crlf")
    await work.check()
    work.write("win.txt", "one\r\ntwo and a half\r\nthree\r\nfour")
    work.write("new-win.txt", "a\r\nb\r\n")
    work.write("lone-cr.txt", "old mac\rline\r")
    await work.check()
    work.commit("more crlf")
    await work.check()


@pytest.mark.parametrize("attributes", ["* text=auto\n", "* text eol=crlf\n"], ids=["text=auto", "eol=crlf"])
async def test_end_of_line_conversion_shows_the_text_as_git_stores_it(work: Work, attributes: str) -> None:
    work.write(".gitattributes", attributes)
    work.write("dos.txt", "alpha\r\nbeta\r\n")
    work.commit("crlf in the work tree, lf in the blob")
    assert work.git("cat-file", "blob", "HEAD:dos.txt").stdout == "alpha\nbeta\n"
    await work.check()
    work.write("dos.txt", "alpha\r\nbeta\r\ngamma\r\n")
    work.write("new-dos.txt", "one\r\ntwo\r\n")
    await work.check()
    work.commit("more")
    await work.check()


async def test_files_without_a_final_newline_keep_it_missing_or_gain_it(work: Work) -> None:
    work.write("tail.txt", "first\nlast without newline")
    work.commit("no newline")
    await work.check()
    work.write("tail.txt", "first\nlast changed, still none")
    work.write("src/app.py", "def main():\n    return 'hello'")
    work.write("new.txt", "single line, no newline")
    await work.check()
    work.write("tail.txt", "first\nlast changed, now ended\n")
    await work.check()
    work.commit("newlines")
    await work.check()


async def test_empty_files_are_shown_added_emptied_and_filled(work: Work) -> None:
    work.write("empty.txt", "")
    work.commit("empty")
    await work.check()
    work.write("empty.txt", "now has text\n")
    work.write("src/util.py", "")
    work.write("also-empty.txt", "")
    await work.check()
    work.commit("emptied and filled")
    await work.check()


async def test_invalid_utf8_is_shown_with_replacement_characters(work: Work) -> None:
    work.write("latin1.txt", "caf\xe9\n".encode("latin-1"))
    work.commit("latin-1")
    await work.check()
    work.write("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1") + b"broken \xc3\x28 sequence\n")
    work.write("mixed.txt", "ok \u00fc\n".encode() + b"bad \xff byte\n")
    await work.check()
    work.commit("more latin-1")
    await work.check()


async def test_text_that_looks_like_headers_stays_text(work: Work) -> None:
    work.write("forged.txt", FORGED)
    work.write("weird ] === [1 lines] ===.txt", FORGED)
    work.commit("forged headers")
    await work.check()
    work.write("forged.txt", FORGED + "@@ -0,0 +1,1 @@\n=== file: y [0 lines] ===")
    work.write("forged-new.txt", "@@ -1,1 +1,1 @@\n" + FORGED)
    await work.check()
    work.commit("more forged headers")
    await work.check()


ODD_PATHS = (
    "dir with space/café.txt",
    "notes [draft] v2.txt",
    "a (copy).txt",
    '"quoted".txt',
    "tab\there.txt",
    "new\nline.txt",
    "日本/ファイル.md",
)


async def test_paths_with_spaces_brackets_quotes_and_non_ascii(work: Work) -> None:
    for number, path in enumerate(ODD_PATHS):
        work.write(path, f"{path}\nline {number}\n")
    await work.check()
    work.commit("odd paths")
    await work.check()
    for path in ODD_PATHS:
        work.write(path, f"{path}\nedited\n")
    work.git("mv", "dir with space/café.txt", "dir with space/crème brûlée.txt")
    await work.check()


async def test_names_that_are_not_utf8_are_shown_with_replacement_characters(work: Work) -> None:
    committed, added = b"caf\xe9.txt", b"d\xffir/x.txt"  # Latin-1, as old archives and Windows tools leave
    work.write(os.fsdecode(committed), b"committed\n")
    work.commit("a latin-1 name")
    work.write(os.fsdecode(added), b"untracked\n")
    sent = await work.check()
    assert parse_snapshot(sent.snapshot).files["caf\ufffd.txt"] == File("file", "committed\n", False)
    assert sent.state["d\ufffdir/x.txt"] == File("file", "untracked\n", False)
    for name in (committed, added):
        work.write(os.fsdecode(name), b"edited\n")
    await work.check()
    work.git("add", "-A")
    await work.check()
    work.commit("edited")
    await work.check()


# --- what is not shown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "config", "reason"),
    [
        ("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00", {}, "binary"),
        ("data/big.txt", b"x" * 5000 + b"\n", {"max_file_bytes": "4KiB"}, "too large"),
        (".env", b"HARMLESS=1\n", {}, "secret by its name"),
    ],
    ids=["binary", "too-large", "secret-by-name"],
)
async def test_files_not_shown_stay_stubs_through_edits_additions_and_commits(
    work: Work, name: str, content: bytes, config: dict[str, str], reason: str
) -> None:
    work.write(name, content + b"committed")
    work.commit("not shown")
    await work.start(repository=config)
    sent = await work.check()
    assert parse_snapshot(sent.snapshot).not_included[name] == reason
    work.write(name, content + b"edited")
    work.write(f"new/{name}", content + b"added")
    sent = await work.check()
    for path in (name, f"new/{name}"):
        assert isinstance(sent.state[path], Hidden), sent.state[path]
        assert [change.hunks for change in changes_of(sent.diff, path)] == [()]
    work.commit("edited, added")
    await work.check()
    (work.path / name).unlink()
    await work.check()


async def test_a_file_over_the_snapshot_cap_stays_a_stub_when_edited(work: Work) -> None:
    work.write("big/over.txt", "x" * 5000 + "\n")
    work.commit("over the cap")
    await work.start(repository={"max_snapshot_bytes": "3000"})
    sent = await work.check()
    assert parse_snapshot(sent.snapshot).not_included["big/over.txt"] == "over the snapshot cap"
    work.write("big/over.txt", "x" * 5000 + "\nEDITED-LINE\n")
    sent = await work.check()
    assert "EDITED-LINE" not in sent.diff
    assert all(change.hidden and not change.hunks for change in changes_of(sent.diff, "big/over.txt"))
    work.commit("edit the big file")
    sent = await work.check()
    assert "EDITED-LINE" not in sent.diff
    assert all(change.hidden and not change.hunks for change in changes_of(sent.diff, "big/over.txt"))


async def test_a_stub_of_a_file_over_the_snapshot_cap_gives_its_size_now(work: Work) -> None:
    work.write("big/over.txt", "x" * 5000 + "\n")
    work.commit("over the cap")
    await work.start(repository={"max_snapshot_bytes": "3000"})
    work.write("big/over.txt", "small now\n")
    sent = await work.check()
    assert header_of(sent.diff, "big/over.txt") == "modified, contents not shown: not in the snapshot (10 bytes)"


#: Files the snapshot leaves out or shows, and what they become: (path, committed, edited, expected
#: details of the change). A stub says what the file is now; one not shown before is shown whole.
NOT_SHOWN_THEN = (
    ("bin.dat", b"\0\1\2\3\4", b"now text\n", ("whole text",)),
    ("big.txt", b"x" * 40000 + b"\n", b"small\n", ("whole text",)),
    ("tool.bin", b"\0\1", b"\0\1\2", ("contents not shown: binary (3 bytes)",)),
    ("to-binary.txt", b"text\n", b"\0now binary\n", ("contents not shown: binary (12 bytes)",)),
    ("to-large.txt", b"text\n", b"y" * 40000 + b"\n", ("contents not shown: too large (40001 bytes)",)),
)


async def leave_the_edits_uncommitted(work: Work) -> None:
    pass


async def commit_the_edits(work: Work) -> None:
    work.commit("the edits")


async def amend_the_base_with_the_edits(work: Work) -> None:
    """HEAD on another line of history: the diff shows the net change since the base."""
    work.git("commit", "-q", "-a", "--amend", "-m", "amended")


async def fold_the_commit_of_the_edits(work: Work) -> None:
    """Commit the edits, then commit on top until the diff's commits are folded into their net changes."""
    work.commit("the edits")
    for number in range(10):
        work.write("src/app.py", "".join(f"line {i} of version {number}\n" for i in range(12)))
        work.commit(f"version {number}")
        if "were made in " in (await work.check()).diff:
            return
    raise AssertionError("no fold happened")


#: Each kind of group, by the start of its label and what puts the edits in one.
GROUP_KINDS: dict[str, tuple[str, Callable[[Work], Awaitable[None]]]] = {
    "uncommitted": ("are not committed yet", leave_the_edits_uncommitted),
    "committed": ("were committed as ", commit_the_edits),
    "since": ("were made since ", amend_the_base_with_the_edits),
    "fold": ("were made in ", fold_the_commit_of_the_edits),
}


@pytest.mark.parametrize("kind", GROUP_KINDS)
async def test_a_stub_describes_the_file_as_it_is_now_and_a_file_not_shown_before_is_shown_whole(
    work: Work, kind: str
) -> None:
    origin, make_group = GROUP_KINDS[kind]
    work.write("src/zz_big.py", "STABLE = True\n" * 2000)  # late in the order: a fold re-reads less than a rebase
    for path, committed, _, _ in NOT_SHOWN_THEN:
        work.write(path, committed)
    work.commit("files left out of the snapshot, and files that will be")
    context = {"rebase_min_diff_bytes": "4000", "rebase_diff_share": "0.01"} if kind == "fold" else {"rebase": "manual"}
    await work.start(repository={"max_file_bytes": "32KiB"}, context=context)
    await work.check()
    for path, _, edited, _ in NOT_SHOWN_THEN:
        work.write(path, edited)
    await make_group(work)
    sent = await work.check()
    groups = parse_diff(sent.diff).groups
    for path, _, edited, details in NOT_SHOWN_THEN:
        [(group, change)] = [(group, change) for group in groups for change in group.changes if change.path == path]
        assert group.origin.startswith(origin) and change.details == details, (group.origin, change)
        if change.whole:
            assert sent.state[path] == File("file", edited.decode(), False)
    await work.restart()
    await work.check()


async def test_ignored_files_never_appear_but_force_added_ones_do(work: Work) -> None:
    work.write(".gitignore", "*.log\nignored-dir/\n")
    work.commit("ignore")
    work.write("debug.log", "IGNORED-LOG-TEXT\n")
    work.write("ignored-dir/x.txt", "IGNORED-DIR-TEXT\n")
    work.write("kept.log", "FORCED-LOG-TEXT\n")
    work.git("add", "-f", "kept.log")
    sent = await work.check()
    assert_never_sent(sent, "IGNORED-LOG-TEXT", "IGNORED-DIR-TEXT", "debug.log", "ignored-dir/x.txt")
    assert sent.state["kept.log"] == File("file", "FORCED-LOG-TEXT\n", False)
    work.commit("keep one log")
    await work.check()


async def test_paths_excluded_by_config_are_left_out_silently(work: Work) -> None:
    work.write("generated/out.txt", "GENERATED-COMMITTED\n")
    work.commit("generated")
    await work.start(repository={"exclude": "generated/\n*.gen"})
    work.write("generated/more.txt", "GENERATED-NEW\n")
    work.write("x.gen", "GENERATED-FILE\n")
    sent = await work.check(left_out_ok=compile_patterns(["generated/", "*.gen"]).excludes)
    assert_never_sent(sent, "GENERATED-")


# --- modes, symlinks, the index --------------------------------------------------------------


async def test_mode_changes_are_carried_for_committed_and_new_files(work: Work) -> None:
    os.chmod(work.path / "src/app.py", 0o755)
    await work.check()
    work.write("run.sh", "#!/bin/sh\necho hi\n").chmod(0o755)
    await work.check()
    work.commit("executables")
    await work.check()
    os.chmod(work.path / "src/app.py", 0o644)
    work.write("run.sh", "#!/bin/sh\necho bye\n")
    await work.check()
    work.commit("not executable any more")
    await work.check()


async def test_symlinks_are_added_and_retargeted_by_their_target_text(work: Work) -> None:
    work.symlink("src/app.py", "link")
    work.symlink("nowhere/dangling", "dangling")
    await work.check()
    work.commit("links")
    await work.check()
    work.symlink("src/util.py", "link")
    await work.check()
    work.commit("retarget")
    await work.check()


async def test_a_file_replaced_by_a_symlink_and_back(work: Work) -> None:
    await work.check()
    (work.path / "src/util.py").unlink()
    work.symlink("app.py", "src/util.py")
    await work.check()
    work.commit("file to link")
    await work.check()
    (work.path / "src/util.py").unlink()
    work.write("src/util.py", "a file again\n")
    await work.check()
    work.commit("link to file")
    await work.check()


async def test_a_directory_replaced_by_a_file_and_back(work: Work) -> None:
    await work.check()
    shutil.rmtree(work.path / "src")
    work.write("src", "now a file\n")
    await work.check()
    work.commit("directory to file")
    await work.check()
    (work.path / "src").unlink()
    work.write("src/inner.txt", "a directory again\n")
    work.symlink("src", "link-to-a-directory")
    await work.check()
    work.commit("file to directory")
    await work.check()


async def test_rm_cached_leaves_the_file_as_untracked_text(work: Work) -> None:
    work.git("rm", "-q", "--cached", "src/util.py")
    await work.check()
    work.git("commit", "-q", "-m", "untrack util")
    await work.check()


async def test_git_rm_then_recreating_the_file_shows_the_new_text(work: Work) -> None:
    work.git("rm", "-q", "src/util.py")
    await work.check()
    work.write("src/util.py", "recreated\n")
    await work.check()
    work.git("add", "src/util.py")
    await work.check()


async def test_intent_to_add_files_show_their_text(work: Work) -> None:
    work.write("planned.txt", "intent\n")
    work.write("planned-empty.txt", "")
    work.git("add", "-N", "planned.txt", "planned-empty.txt")
    await work.check()
    work.write("planned.txt", "intent, edited\n")
    await work.check()


# --- history: merges, checkouts, resets, restarts ------------------------------------------------


def branch_with(work: Work, branch: str, files: dict[str, str | None]) -> None:
    """Commit `files` (None: delete) on a new branch off HEAD, then go back to main."""
    work.git("checkout", "-q", "-b", branch)
    for name, content in files.items():
        if content is None:
            work.git("rm", "-q", name)
        else:
            work.write(name, content)
        work.commit(f"{branch}: {name}")
    work.git("checkout", "-q", "main")


async def test_a_merge_stopped_on_a_conflict_shows_the_markers(work: Work) -> None:
    branch_with(work, "other", {"src/app.py": "def main():\n    return 'theirs'\n", "src/util.py": None})
    work.write("src/app.py", "def main():\n    return 'ours'\n")
    work.write("src/util.py", "def add(a, b):\n    return 'ours'\n")
    work.commit("ours")
    await work.check()
    assert work.git("merge", "other", ok=False).returncode != 0
    sent = await work.check()
    app = sent.state["src/app.py"]
    assert isinstance(app, File), app
    assert "<<<<<<< HEAD\n" in app.text and "+<<<<<<< HEAD\n" in sent.diff
    work.write("src/app.py", "def main():\n    return 'resolved'\n")
    work.commit("merge other")
    await work.check()


async def test_a_no_ff_merge_is_carried_as_its_changes(work: Work) -> None:
    await work.check()
    branch_with(work, "feature", {"feature.txt": "f1\n", "src/util.py": "def add(a, b):\n    return a + b + 0\n"})
    work.write("README.md", "# Demo\n\nMain moved on.\n")
    work.commit("main moves on")
    await work.check()
    work.git("merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    await work.check()


async def test_checking_out_another_branch_and_back(work: Work) -> None:
    branch_with(work, "other", {"src/app.py": "def main():\n    return 'other'\n", "other.txt": "only on other\n"})
    await work.check()
    work.git("checkout", "-q", "other")
    await work.check()
    work.write("README.md", "# Demo\n\nAn edit carried across checkouts.\n")
    await work.check()
    work.git("checkout", "-q", "main")
    await work.check()
    work.git("checkout", "-q", "--detach", "other")
    await work.check()


@pytest.mark.parametrize("mode", ["--hard", "--soft", "--mixed"])
async def test_a_reset_of_the_last_two_commits(work: Work, mode: str) -> None:
    await work.check()
    for step in range(2):
        work.write("src/app.py", f"def main():\n    return {step}\n")
        work.write(f"added-{step}.txt", f"{step}\n")
        work.commit(f"commit {step}")
    await work.check()
    work.git("reset", "-q", mode, "HEAD~2")
    await work.check()


async def test_a_hard_reset_behind_the_snapshot_commit(work: Work) -> None:
    work.write("second.txt", "second\n")
    work.commit("second")
    await work.check()
    work.git("reset", "-q", "--hard", "HEAD~1")
    await work.check()
    work.write("third.txt", "another line of history\n")
    work.commit("third")
    await work.check()


async def test_a_restarted_proxy_on_the_same_state_still_rebuilds_the_tree(work: Work) -> None:
    work.write("src/app.py", "def main():\n    return 'committed'\n")
    await work.check()
    work.commit("before the restart")
    work.write("src/util.py", "uncommitted at the restart\n")
    await work.check()
    await work.restart()
    await work.check()
    work.write("after.txt", "after the restart\n")
    work.commit("after the restart")
    await work.check()


async def test_commits_folded_into_their_net_changes_still_rebuild_the_tree(work: Work) -> None:
    work.write("src/zz_big.py", "STABLE = True\n" * 2000)  # late in the order: a fold re-reads less than a rebase
    work.commit("a big file late in the order")
    await work.start(context={"rebase_min_diff_bytes": "4000", "rebase_diff_share": "0.01"})
    await work.check()
    labels = []
    for number in range(10):
        work.write("src/app.py", "".join(f"line {i} of version {number}\n" for i in range(12)))
        work.write(f"added/{number}.txt", f"added in {number}\n")
        if number == 3:
            (work.path / "src/util.py").unlink()
            work.symlink("app.py", "src/util.py")
            os.chmod(work.path / "README.md", 0o755)
        work.commit(f"version {number}")
        work.write("src/app.py", f"uncommitted on top of {number}\n")
        sent = await work.check()
        labels += [group.origin for group in parse_diff(sent.diff).groups]
    assert any(label.startswith("were made in ") for label in labels), "no fold happened"
    await work.restart()
    await work.check()


# --- secrets -----------------------------------------------------------------------------------


async def test_a_line_added_right_after_a_private_key_never_shows_the_key(work: Work) -> None:
    work.write("deploy/notes.txt", f"before\n{PRIVATE_KEY}\nafter\n")
    work.commit("a key")
    assert_never_sent(await work.check(), *key_lines())
    work.write("deploy/notes.txt", f"before\n{PRIVATE_KEY}\njust after the key\nafter\n")
    assert_never_sent(await work.check(), *key_lines())
    work.commit("a line after the key")
    assert_never_sent(await work.check(), *key_lines())


async def test_a_multi_line_private_key_added_and_removed_keeps_hunk_counts_exact(work: Work) -> None:
    await work.check()
    work.write("src/app.py", f"def main():\n{PRIVATE_KEY}\n    return 'hello'\n")
    work.write("deploy/new.txt", f"{PRIVATE_KEY}\n")
    assert_never_sent(await work.check(), *key_lines())
    work.commit("keys")
    assert_never_sent(await work.check(), *key_lines())
    work.write("src/app.py", "def main():\n    return 'hello'\n")
    assert_never_sent(await work.check(), *key_lines())


async def test_a_token_in_a_commit_message_never_reaches_the_label(work: Work) -> None:
    await work.check()
    work.write("src/app.py", "def main():\n    return 'rotated'\n")
    work.commit(f"rotate credentials {TOKEN} done")
    sent = await work.check()
    assert_never_sent(sent, TOKEN)
    labels = [group.origin for group in parse_diff(sent.diff).groups]
    assert any(label.startswith("were committed as ") and "[REDACTED:github-token:" in label for label in labels), (
        labels
    )


# --- a replayed history ---------------------------------------------------------------------------

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "café",
    "naïve",
    "日本語",
    "🎉",
    "tab\there",
    "trailing ",
    "{",
    "}",
    "return x",
    "# note",
    "=== x ===",
)
PLACES = ("src", "docs", "src/deep/er", "dir with space", "ünï")


def random_text(rng: random.Random) -> str:
    lines = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(rng.randint(0, 12))]
    text = "\n".join(lines)
    return text + "\n" if lines and rng.random() < 0.75 else text


def work_tree_files(root: Path) -> list[str]:
    names = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name != ".git")
        names += [os.path.relpath(os.path.join(directory, name), root) for name in files]
    return sorted(names)


ACTIONS = ("edit", "add", "delete", "rename", "chmod", "commit", "branch", "switch", "merge", "reset")


def replay_schedule(rng: random.Random, steps: int) -> list[str]:
    """Every action twice, the rest weighted towards edits and commits, in a seeded order."""
    schedule = [*ACTIONS, *ACTIONS]
    schedule += rng.choices(ACTIONS, weights=[6, 3, 1, 1, 1, 3, 1, 1, 2, 1], k=steps - len(schedule))
    rng.shuffle(schedule)
    return schedule


def change_work_tree(work: Work, rng: random.Random, action: str, number: int) -> str:
    """Edit, add, delete, rename or chmod one file; says what it did."""
    files = work_tree_files(work.path)
    if not files:
        action = "add"
    if action == "add":
        name = f"{rng.choice(PLACES)}/file-{number}.txt"
        work.write(name, random_text(rng))
        return f"add {name}"
    name = rng.choice(files)
    if action == "edit":
        lines = (work.path / name).read_text(errors="replace").split("\n")
        start = rng.randint(0, len(lines))
        lines[start : start + rng.randint(0, 3)] = random_text(rng).split("\n")
        work.write(name, "\n".join(lines))
    elif action == "delete":
        (work.path / name).unlink()
    elif action == "rename":
        target = f"{rng.choice(PLACES)}/renamed-{number}.txt"
        (work.path / target).parent.mkdir(parents=True, exist_ok=True)
        os.rename(work.path / name, work.path / target)
        return f"rename {name} -> {target}"
    else:
        (work.path / name).chmod((work.path / name).stat().st_mode ^ 0o111)
    return f"{action} {name}"


def replay_step(work: Work, rng: random.Random, action: str, number: int, branches: list[str]) -> str:
    """One change to the work tree or, after committing everything, to history. Deterministic."""
    if action in ("edit", "add", "delete", "rename", "chmod"):
        return change_work_tree(work, rng, action, number)
    work.commit(f"step {number}")
    current = work.git("branch", "--show-current").stdout.strip()
    others = [name for name in ("main", *branches) if name != current]
    if action == "branch" or (action in ("switch", "merge") and not others):
        branches.append(f"b{number}")
        work.git("checkout", "-q", "-b", branches[-1], "main")
        changed = change_work_tree(work, rng, "edit", number)
        work.commit(f"step {number} on {branches[-1]}")
        return f"commit, checkout -b {branches[-1]}, {changed}, commit"
    if action == "switch":
        target = "main" if current != "main" else rng.choice(others)
        work.git("checkout", "-q", target)
        return f"commit, checkout {target}"
    if action == "merge":
        branch = rng.choice(others)
        merged = work.git("merge", "-q", "--no-ff", "-m", f"merge {number}", branch, ok=False)
        return f"commit, merge {branch}" + (" stopped on a conflict" if merged.returncode else "")
    if action == "reset" and work.git("rev-parse", "-q", "--verify", "HEAD~1", ok=False).returncode == 0:
        mode = rng.choice(["--hard", "--soft", "--mixed"])
        work.git("reset", "-q", mode, "HEAD~1")
        return f"commit, reset {mode} HEAD~1"
    return "commit"


@pytest.mark.parametrize(
    "context",
    [{"rebase": "auto", "rebase_diff_share": "0.05", "rebase_min_diff_bytes": "0"}, {"rebase": "every-commit"}],
    ids=["auto-rebasing-often", "every-commit"],
)
async def test_a_replayed_history_reconstructs_after_every_step(work: Work, context: dict[str, str]) -> None:
    rng = random.Random(20240917)
    branches: list[str] = []
    await work.start(context=context)
    await work.check()
    done = []
    for number, action in enumerate(replay_schedule(rng, 40)):
        if (work.path / ".git" / "MERGE_HEAD").exists():  # a conflict, checked as it was: give up the merge
            work.git("merge", "--abort")
            done.append("merge --abort")
        done.append(replay_step(work, rng, action, number, branches))
        try:
            await work.check()
        except AssertionError as error:
            raise AssertionError(f"after step {number} ({'; '.join(done[-3:])}): {error}") from None


# --- the process survives files truncated under it ----------------------------------------------

CHURNED = 4
CHURN_PAYLOAD = b"".join(b"%07d a line of a large file that keeps being rewritten\n" % n for n in range(18_000))


def churn(paths: list[Path], stop: threading.Event, seconds: float) -> None:
    """Truncate and rewrite the files in a tight loop, in pieces, until told to stop."""
    deadline = time.monotonic() + seconds
    for _ in range(1_000_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        for path in paths:
            with open(path, "wb") as file:  # O_TRUNC: a reader's map of the old size now overhangs
                for start in range(0, len(CHURN_PAYLOAD), 256 * 1024):
                    file.write(CHURN_PAYLOAD[start : start + 256 * 1024])
                    file.flush()


async def quiet_upstream(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response(completion())


async def test_truncating_files_while_diffs_run_never_kills_the_proxy(
    tmp_path: Path, git_repo: GitRepo, aiohttp_server: Any
) -> None:
    upstream_app = web.Application(client_max_size=256 * 1024 * 1024)
    upstream_app.router.add_post("/v1/chat/completions", quiet_upstream)
    upstream = await aiohttp_server(upstream_app, host="127.0.0.1")
    paths = [git_repo.write(f"churn/{n}.txt", "small\n") for n in range(CHURNED)]
    git_repo.commit("files that will grow large")
    paths.append(git_repo.path / "churn" / "untracked.txt")
    for path in paths:
        path.write_bytes(CHURN_PAYLOAD)
    config = write_config(
        tmp_path,
        {
            "server": {"port": str(free_port())},
            "upstream": {"url": str(upstream.make_url("/v1"))},
            "repository": {"path": str(git_repo.path), "max_file_bytes": "4MiB"},
            "context": {"state_dir": str(tmp_path / "state")},
        },
    )
    stop = threading.Event()
    churner = threading.Thread(target=churn, args=(paths, stop, 25.0), daemon=True)
    async with aiohttp.ClientSession() as session, ProxyProcess(config, tmp_path / "proxy.log") as proxy:
        try:
            churner.start()
            deadline = time.monotonic() + 20
            for _ in range(150):  # pairs of requests: at most 300
                if time.monotonic() > deadline or proxy.returncode is not None:
                    break
                await asyncio.gather(*(ask(session, proxy.url) for _ in range(2)), return_exceptions=True)
            stop.set()
            await asyncio.to_thread(churner.join, 30)
            alive = await answers_health(session, proxy.url)
            if not alive:
                with contextlib.suppress(TimeoutError):
                    await proxy.wait(5)
            code = proxy.returncode
            assert alive and code is None, f"the proxy died ({describe(code)}):\n{proxy.log_tail(2000)}"
        finally:
            stop.set()


async def ask(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(
        f"{url}/v1/chat/completions", json=chat(), timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        await response.read()
        return response.status


async def answers_health(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def describe(code: int | None) -> str:
    if code is None:
        return "still running but not answering /health"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
