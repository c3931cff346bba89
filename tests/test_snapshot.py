"""The snapshot: what the upstream receives first, byte for byte, for real repositories."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pygit2
from pygit2.enums import FileMode

from support import (
    SIGNATURE,
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    chat,
    headed_paths,
    header_of,
    injected,
    snapshot_ready,
)


async def test_snapshot_is_byte_identical_across_requests(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    client = await make_proxy()
    for _ in range(3):
        await client.post("/v1/chat/completions", json=chat())
    first = [seen.raw.split(b',{"role":"system"', 1)[0] for seen in upstream.seen]
    assert len(set(first)) == 1
    assert b"=== file: src/app.py [2 lines] ===" in first[0]


async def test_snapshot_names_its_commit_last_and_puts_stable_files_first(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("a.b", "dot\n")
    git_repo.write("a/z.txt", "slash\n")
    git_repo.write("B.txt", "upper\n")
    git_repo.commit("more files")
    snapshot, _ = await injected(await make_proxy(), upstream)
    assert git_repo.head() not in snapshot.split("=== file:")[0]
    assert snapshot.endswith(f"=== end of snapshot: commit {git_repo.head()} ===\n")
    order = headed_paths(snapshot)
    # unchanged since the first commit, in byte order; then the newer files, in byte order
    assert order == ["README.md", "src/app.py", "src/util.py", "B.txt", "a.b", "a/z.txt"]


async def test_symlinks_show_their_target_and_are_never_followed(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("content from outside the repository\n")
    os.symlink(outside, git_repo.path / "committed-link")
    git_repo.commit("link")
    os.symlink(outside, git_repo.path / "untracked-link")
    snapshot, diff = await injected(await make_proxy(), upstream)
    assert f"=== symlink: committed-link [1 lines, no newline at end] ===\n{outside}\n" in snapshot
    assert f"+{outside}" in diff
    assert "content from outside" not in snapshot + diff


async def test_binary_large_and_excluded_files_are_not_inlined(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00binary")
    git_repo.write("data/big.txt", "x" * 5000 + "\n")
    git_repo.write("package-lock.json", '{"lock": "LOCKFILE-CONTENT"}\n')
    git_repo.write("node_modules/dep/index.js", "NODE-MODULE-CONTENT\n")
    git_repo.commit("assets")
    git_repo.write("new-big.txt", "y" * 5000 + "\n")
    git_repo.write("node_modules/dep/other.js", "UNTRACKED-EXCLUDED\n")
    snapshot, diff = await injected(await make_proxy(repository={"max_file_bytes": "4KiB"}), upstream)
    assert "binary: logo.png (16 bytes)" in snapshot
    assert "too large: data/big.txt (5001 bytes)" in snapshot
    assert "x" * 100 not in snapshot
    assert "LOCKFILE-CONTENT" not in snapshot and "NODE-MODULE-CONTENT" not in snapshot
    assert "new-big.txt" in diff and "too large (5001 bytes)" in diff and "y" * 100 not in diff
    assert "UNTRACKED-EXCLUDED" not in diff


async def test_snapshot_cap_leaves_files_out_deterministically(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    for name in ("a", "b", "c", "d"):
        git_repo.write(f"big/{name}.txt", name * 1000 + "\n")
    git_repo.commit("big files")
    client = await make_proxy(repository={"max_snapshot_bytes": "2500"})
    first, _ = await injected(client, upstream)
    assert {"big/a.txt", "big/b.txt"} <= set(headed_paths(first))
    assert "over the snapshot cap: big/c.txt (1001 bytes)" in first
    assert "over the snapshot cap: big/d.txt (1001 bytes)" in first
    # small files after the cap still fit: first-fit in path order
    assert "src/util.py" in headed_paths(first)


async def test_unborn_head_gives_an_empty_snapshot_and_everything_in_the_diff(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "fresh")
    repo.write("staged.py", "print('staged')\n")
    repo.stage("staged.py")
    repo.write("untracked.py", "print('untracked')\n")
    client = await make_proxy(repo=repo)
    snapshot, diff = await injected(client, upstream)
    assert "no commits yet" in snapshot
    assert "+print('staged')" in diff and "+print('untracked')" in diff
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.headers["X-Scout-Snapshot-Commit"] == "none"


async def test_detached_head_works(make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo) -> None:
    first = git_repo.head()
    git_repo.write("src/app.py", "second\n")
    git_repo.commit("second")
    git_repo.repo.set_head(pygit2.Oid(hex=first))
    git_repo.repo.checkout_tree(git_repo.repo[first], strategy=pygit2.enums.CheckoutStrategy.FORCE)
    assert git_repo.repo.head_is_detached
    snapshot, diff = await injected(await make_proxy(), upstream)
    assert first in snapshot and "return 'hello'" in snapshot
    assert "No changes" in diff


async def test_non_utf8_content_is_decoded_with_replacement_characters(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))
    git_repo.commit("latin-1")
    git_repo.write("latin1-new.txt", "na\xefve\n".encode("latin-1"))
    client = await make_proxy()
    snapshot, diff = await injected(client, upstream)
    again, _ = await injected(client, upstream)
    assert "caf\ufffd cr\ufffdme" in snapshot
    assert "na\ufffdve" in diff
    assert snapshot == again


async def test_submodules_are_listed_not_read(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    index = git_repo.repo.index
    gitlink = pygit2.Oid(hex="1234567890abcdef1234567890abcdef12345678")
    index.add(pygit2.IndexEntry("vendored/lib", gitlink, FileMode.COMMIT))
    index.write()
    tree = index.write_tree()
    git_repo.repo.create_commit("HEAD", SIGNATURE, SIGNATURE, "submodule", tree, [git_repo.repo.head.target])
    client = await make_proxy(context={"rebase": "manual"})
    snapshot, _ = await injected(client, upstream)
    assert f"submodule: vendored/lib (at {gitlink})" in snapshot
    index.add(pygit2.IndexEntry("vendored/other", gitlink, FileMode.COMMIT))  # a commit after the snapshot's
    index.write()
    git_repo.repo.create_commit(
        "HEAD", SIGNATURE, SIGNATURE, "another", index.write_tree(), [git_repo.repo.head.target]
    )
    _, diff = await injected(client, upstream)
    assert header_of(diff, "vendored/other") == f"added, contents not shown: submodule (at {gitlink})"


async def test_concurrent_cold_requests_build_the_snapshot_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "every-commit"})
    await snapshot_ready(client)
    git_repo.write("src/app.py", "new commit, so the startup build is stale\n")
    git_repo.commit("cold")
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat()) for _ in range(12)))
    assert [response.status for response in responses] == [200] * 12
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["builds"] == 2  # the one at startup, then one for the new commit
    assert health["snapshot"]["commit"] == git_repo.head()
