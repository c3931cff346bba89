"""The working diff: what the work tree changed since the snapshot's base, as the upstream receives it."""

from __future__ import annotations

import itertools
import os

from support import (
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    chat,
    five_files,
    five_files_manual,
    headed_paths,
    header_of,
    injected,
)


async def test_edits_staged_and_untracked_files_change_the_diff_not_the_snapshot(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    clean_snapshot, clean_diff = await injected(client, upstream)
    assert "No changes" in clean_diff

    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    git_repo.write("src/util.py", "def add(a, b):\n    return b + a\n")
    git_repo.stage("src/util.py")
    git_repo.write("notes/new.txt", "brand new untracked file\n")
    (git_repo.path / "README.md").unlink()
    snapshot, diff = await injected(client, upstream)

    assert snapshot == clean_snapshot
    assert "+    return 'edited'" in diff
    assert "+    return b + a" in diff
    assert "+brand new untracked file" in diff
    assert header_of(diff, "README.md") == "deleted"
    assert "'edited'" not in snapshot


async def test_staged_then_edited_again_shows_the_working_tree(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("src/app.py", "staged version\n")
    git_repo.stage("src/app.py")
    git_repo.write("src/app.py", "working version\n")
    _, diff = await injected(await make_proxy(), upstream)
    assert "+working version" in diff
    assert "staged version" not in diff


async def test_ignored_files_never_appear(make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo) -> None:
    git_repo.write(".gitignore", "secret.txt\nlogs/\n")
    git_repo.commit("ignore")
    git_repo.write("secret.txt", "hunter2\n")
    git_repo.write("logs/today.log", "hunter3\n")
    snapshot, diff = await injected(await make_proxy(), upstream)
    assert "hunter2" not in snapshot + diff
    assert "hunter3" not in snapshot + diff


async def test_a_commit_keeps_the_snapshot_and_the_diff_carries_it(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    before, _ = await injected(client, upstream)
    base = git_repo.head()
    git_repo.write("src/app.py", "def main():\n    return 'committed'\n")
    commit = git_repo.commit("edit app")
    after, diff = await injected(client, upstream)
    assert after == before
    assert "+    return 'committed'" in diff
    assert diff.endswith(f"=== snapshot commit {base}; HEAD is {commit} ===\n")
    response = await client.post("/v1/chat/completions", json=chat())
    assert response.headers["X-Scout-Snapshot-Commit"] == base


async def test_diff_lists_committed_changes_first_then_working_changes_by_age(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await five_files_manual(make_proxy, upstream, git_repo)
    git_repo.write("e.txt", "committed change\n")
    git_repo.commit("commit e")
    for name, age in (("a.txt", 300), ("b.txt", 100), ("d.txt", 200)):
        path = git_repo.write(name, f"working change to {name}\n")
        os.utime(path, ns=(1_800_000_000_000_000_000 - age * 10**9,) * 2)
    _, diff = await injected(client, upstream)
    order = headed_paths(diff)
    assert order == ["e.txt", "a.txt", "d.txt", "b.txt"]

    path = git_repo.write("a.txt", "edited again, now the newest\n")
    os.utime(path, ns=(1_800_000_000_000_000_000,) * 2)
    _, again = await injected(client, upstream)
    assert headed_paths(again)[-1] == "a.txt"
    cut = diff.index("=== file: a.txt [")
    assert again.index("=== file: d.txt [") == cut  # everything before the edited file stays put
    assert again[:cut] == diff[:cut]


async def test_the_diff_only_grows_at_its_end_across_commits(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await five_files_manual(make_proxy, upstream, git_repo)
    texts = []
    for number, name in enumerate("abcab"):
        git_repo.write(f"{name}.txt", f"edit {number}\n")
        git_repo.commit(f"edit {number} of {name}")
        git_repo.write("scratch.txt", f"work in progress {number}\n")
        _, diff = await injected(client, upstream)
        texts.append(diff)
    for earlier, later in itertools.pairwise(texts):
        committed = earlier[: earlier.rindex("were committed as")]
        assert later.startswith(committed)  # earlier commits' groups never change
    last = texts[-1]
    assert last.count("=== the changes above were committed as ") == 5
    assert last.index("+edit 3") < last.index("+edit 4") < last.index("+work in progress 4")
    assert last.index("=== the changes above are not committed yet ===") > last.index("+work in progress 4")


async def test_committing_keeps_the_diff_bytes_up_to_the_new_label(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    five_files(git_repo)
    git_repo.write("tool.bin", b"\0\1" * 100)
    git_repo.write("big.txt", "line\n" * 2000)
    git_repo.commit("a binary and a big file")
    client = await make_proxy(context={"rebase": "manual"}, repository={"max_file_bytes": "4KiB"})
    await injected(client, upstream)
    edits: tuple[tuple[str, str | bytes], ...] = (
        ("tool.bin", b"\2\0" * 100),
        ("big.txt", "line two\n" * 2000),
        ("d.txt", "work on d\n"),
        ("b.txt", "work on b\n"),
        ("new.txt", "work on new\n"),
    )
    for when, (name, content) in enumerate(edits):
        path = git_repo.write(name, content)
        os.utime(path, ns=(1_800_000_000_000_000_000 + when * 10**9,) * 2)
    _, working = await injected(client, upstream)
    commit = git_repo.commit("commit the work")
    git_repo.write("d.txt", "more work on d\n")  # edited again before the next question
    _, committed = await injected(client, upstream)
    label = working.index("=== the changes above are not committed yet ===")
    assert header_of(working, "tool.bin") == "modified, contents not shown: binary (200 bytes)"
    assert header_of(working, "big.txt") == "modified, contents not shown: too large (18000 bytes)"
    assert committed[:label] == working[:label]  # also a binary file and one too large to show
    assert committed[label:].startswith(f"=== the changes above were committed as {commit}: commit the work ===")
