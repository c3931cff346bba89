"""Rendering in worker processes, reusing sections and keeping chunks change no byte that is sent.

Each test builds the same snapshot with the renderer as it was before (`snapshot_before.py`, one
thread, one joined message) and with the current one, and compares every byte and every field.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
from pygit2.enums import FileMode

from scout_diff_cache import runtime
from scout_diff_cache.apis.assembly import SYSTEM_CLOSE, SYSTEM_OPEN
from scout_diff_cache.app import make_app
from scout_diff_cache.git.epoch import Epoch
from scout_diff_cache.git.repository import ContentRules
from scout_diff_cache.git.snapshot import CHUNK_BYTES, Snapshot, build_snapshot
from scout_diff_cache.git.workers import POOL_MIN_ENTRIES, Workers
from scout_diff_cache.patterns import compile_patterns

import snapshot_before
from support import SIGNATURE, FakeUpstream, GitRepo, injected, proxy_config, snapshot_ready

SECRET = "AKIA" + "ABCDEFGHIJKLMNOP"


@pytest.fixture
def varied(git_repo: GitRepo) -> GitRepo:
    """Every kind of entry the snapshot treats differently, and enough files to need several batches."""
    for number in range(60):
        git_repo.write(f"pkg/module{number:02d}.py", f"# module {number}\n" + "value = 1\n" * number)
    git_repo.write("tool.sh", "#!/bin/sh\necho hi\n").chmod(0o755)
    git_repo.write("no-newline.txt", "last line")
    git_repo.write("empty.txt", "")
    git_repo.write("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00binary")
    git_repo.write("data/big.txt", "x" * 5000 + "\n")
    git_repo.write("package-lock.json", '{"lock": 1}\n')
    git_repo.write(".env", "TOKEN=abc\n")
    git_repo.write("settings.py", f'AWS_ACCESS_KEY_ID = "{SECRET}"\n')
    git_repo.write("latin1.txt", "caf\xe9\n".encode("latin-1"))
    git_repo.write('quote"d\tname.txt', 'say "hi" \\ \u2603\n')
    git_repo.write("wide/\u00fcnicode.md", "\u00fc\U0001f600\n" * 3)
    (git_repo.path / "link").symlink_to("src/app.py")
    git_repo.commit("varied")
    index = git_repo.repo.index
    index.add(pygit2.IndexEntry("vendored/lib", pygit2.Oid(hex="12" * 20), FileMode.COMMIT))
    index.write()
    git_repo.repo.create_commit(
        "HEAD", SIGNATURE, SIGNATURE, "submodule", index.write_tree(), [git_repo.repo.head.target]
    )
    return git_repo


@pytest.fixture
def pool() -> Iterator[Workers]:
    workers = Workers(processes=2, min_entries=0)
    yield workers
    workers.close()


def rules(secrets: str = "redact") -> ContentRules:
    return ContentRules(compile_patterns(["package-lock.json"]), 4096, secrets)


def text_of(message: bytes) -> bytes:
    """The encoded text of the old renderer's system message: the git layer now sends no envelope."""
    assert message.startswith(SYSTEM_OPEN) and message.endswith(SYSTEM_CLOSE)
    return message[len(SYSTEM_OPEN) : len(message) - len(SYSTEM_CLOSE)]


def assert_same(before: snapshot_before.Snapshot, now: Snapshot) -> None:
    assert now.encoded() == text_of(before.message)
    assert [(item.path, item.reason, item.detail) for item in now.left_out] == [
        (item.path, item.reason, item.detail) for item in before.left_out
    ]
    assert (now.commit, now.inlined, now.text_bytes, now.excluded, now.findings, now.order) == (
        before.commit,
        before.inlined,
        before.text_bytes,
        before.excluded,
        before.findings,
        before.order,
    )


@pytest.mark.parametrize("secrets", ["redact", "exclude-file", "off"])
def test_a_snapshot_rendered_in_the_thread_is_the_same_bytes_as_before(varied: GitRepo, secrets: str) -> None:
    before = snapshot_before.build_snapshot(varied.path, varied.head(), rules(secrets), 1 << 30, None)
    assert_same(before, build_snapshot(varied.path, varied.head(), rules(secrets), 1 << 30, None))


def test_a_snapshot_rendered_by_worker_processes_is_the_same_bytes_as_before(varied: GitRepo, pool: Workers) -> None:
    before = snapshot_before.build_snapshot(varied.path, varied.head(), rules(), 1 << 30, None)
    assert_same(before, build_snapshot(varied.path, varied.head(), rules(), 1 << 30, None, workers=pool))


def test_the_cap_leaves_out_the_same_files_as_before(varied: GitRepo, pool: Workers) -> None:
    before = snapshot_before.build_snapshot(varied.path, varied.head(), rules(), 3000, None)
    assert any(item.reason == "over the snapshot cap" for item in before.left_out)
    assert_same(before, build_snapshot(varied.path, varied.head(), rules(), 3000, None, workers=pool))


def test_a_rebase_reusing_sections_is_the_same_bytes_as_a_fresh_build(varied: GitRepo, pool: Workers) -> None:
    first = build_snapshot(varied.path, varied.head(), rules(), 1 << 30, None, workers=pool)
    varied.write("pkg/module07.py", "# changed\n")
    varied.write("pkg/added.py", "# added\n")
    (varied.path / "pkg/module08.py").unlink()
    varied.repo.index.remove("pkg/module08.py")
    varied.commit("a few files")
    epoch = Epoch(first.commit, first.order)
    before = snapshot_before.build_snapshot(varied.path, varied.head(), rules(), 1 << 30, epoch)
    rebased = build_snapshot(varied.path, varied.head(), rules(), 1 << 30, epoch, workers=pool, reuse=first)
    assert_same(before, rebased)
    assert rebased.key == first.key
    assert rebased.order[-2:] == ("pkg/added.py", "pkg/module07.py")


def test_sections_are_reused_only_under_the_same_rules(varied: GitRepo) -> None:
    first = build_snapshot(varied.path, varied.head(), rules("off"), 1 << 30, None)
    before = snapshot_before.build_snapshot(varied.path, varied.head(), rules(), 1 << 30, first.epoch)
    assert_same(before, build_snapshot(varied.path, varied.head(), rules(), 1 << 30, first.epoch, reuse=first))
    assert SECRET in first.encoded().decode()


def test_a_build_leaves_the_process_as_it_was(varied: GitRepo) -> None:
    """Process-wide tuning is the server's (`runtime.after_build`), not the library's."""
    frozen = gc.get_freeze_count()
    build_snapshot(varied.path, varied.head(), rules(), 1 << 30, None)
    assert gc.get_freeze_count() == frozen


def test_a_built_snapshot_is_left_out_of_the_collectors_passes_yet_freed_when_dropped(varied: GitRepo) -> None:
    snapshot = build_snapshot(varied.path, varied.head(), rules(), 1 << 30, None)
    runtime.after_build()  # as the server runs it after each build
    assert snapshot.rendered is not None
    walked = {id(item) for item in gc.get_objects()}  # every generation the collector passes over
    assert not walked & {id(snapshot), id(snapshot.rendered), *map(id, snapshot.rendered.sections.values())}
    dropped = weakref.ref(snapshot)
    del snapshot
    assert dropped() is None


def test_a_large_snapshot_is_kept_as_chunks_of_bounded_size(git_repo: GitRepo, pool: Workers) -> None:
    for number in range(40):
        git_repo.write(f"big/{number:02d}.txt", f"line {number}\n" * 10_000)
    git_repo.commit("large")
    big = ContentRules(compile_patterns([]), 1 << 20)
    before = snapshot_before.build_snapshot(git_repo.path, git_repo.head(), big, 1 << 30, None)
    now = build_snapshot(git_repo.path, git_repo.head(), big, 1 << 30, None, workers=pool)
    assert_same(before, now)
    assert len(now.json_text) > 1
    assert max(map(len, now.json_text)) < 2 * CHUNK_BYTES
    assert b"".join(now.json_text) == text_of(before.message)


def test_a_rebase_takes_the_unchanged_chunks_as_they_are_and_sends_the_same_bytes(
    git_repo: GitRepo, pool: Workers
) -> None:
    for number in range(40):
        git_repo.write(f"big/{number:02d}.txt", f"line {number}\n" * 10_000)
    git_repo.commit("large")
    big = ContentRules(compile_patterns([]), 1 << 20)
    first = build_snapshot(git_repo.path, git_repo.head(), big, 1 << 30, None, workers=pool)
    git_repo.write("big/30.txt", "changed\n")  # moves to the end: the chunks before it stay as they were
    git_repo.commit("one file")
    before = snapshot_before.build_snapshot(git_repo.path, git_repo.head(), big, 1 << 30, first.epoch)
    rebased = build_snapshot(git_repo.path, git_repo.head(), big, 1 << 30, first.epoch, workers=pool, reuse=first)
    assert_same(before, rebased)
    kept = [now is then for now, then in zip(rebased.json_text, first.json_text, strict=False)]
    assert len(first.json_text) > 3 and kept[0] and not kept[-1] and kept.index(False) < len(kept) - 1
    assert rebased.rendered is not None  # every section it keeps for the next rebase views its own chunks
    views = [item.encoded for item in rebased.rendered.sections.values() if isinstance(item.encoded, memoryview)]
    assert len(views) == rebased.files and {id(view.obj) for view in views} <= set(map(id, rebased.json_text))
    under_other_rules = ContentRules(compile_patterns(["*.none"]), 1 << 20)  # the same text, other rules
    other = build_snapshot(git_repo.path, git_repo.head(), under_other_rules, 1 << 30, first.epoch, reuse=first)
    assert other.encoded() == rebased.encoded() and not set(map(id, other.json_text)) & set(map(id, first.json_text))


def test_an_unborn_repository_renders_as_before(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "unborn")
    assert_same(
        snapshot_before.build_snapshot(repo.path, None, rules(), 1 << 30, None),
        build_snapshot(repo.path, None, rules(), 1 << 30, None),
    )


async def test_a_large_tree_is_rendered_by_worker_processes_that_end_with_the_app(
    tmp_path: Path, git_repo: GitRepo, upstream: FakeUpstream, aiohttp_client: Any
) -> None:
    for number in range(POOL_MIN_ENTRIES):
        git_repo.write(f"many/{number:03d}.py", f"value = {number}\n")
    git_repo.commit("many files")
    config = proxy_config(tmp_path, git_repo, upstream.url)
    before = snapshot_before.build_snapshot(
        git_repo.path, git_repo.head(), ContentRules.from_config(config), config.repository.max_snapshot_bytes, None
    )
    client = await aiohttp_client(make_app(config))
    await snapshot_ready(client)
    assert multiprocessing.active_children(), "no worker process rendered the snapshot"
    snapshot, _ = await injected(client, upstream)
    assert snapshot == json.loads(before.message)["content"]
    await client.close()
    assert not multiprocessing.active_children()
