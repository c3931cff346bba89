"""The snapshot's file order: files unchanged longest first, changed and new files at the end."""

from __future__ import annotations

import pygit2

from scout_diff_cache.config import Config
from scout_diff_cache.git.order import HISTORY_WINDOW, carry_order, last_changes, least_recent_first
from scout_diff_cache.git.repository import ContentRules
from scout_diff_cache.git.snapshot import WALK_PARTS, build_snapshot

from support import (
    GitRepo,
)


def test_initial_order_puts_files_unchanged_in_the_window_first(git_repo: GitRepo) -> None:
    git_repo.write("z_old.txt", "old\n")
    git_repo.commit("old file")
    git_repo.write("src/app.py", "changed once\n")
    git_repo.commit("app")
    git_repo.write("README.md", "changed last\n")
    git_repo.commit("readme")
    repo = git_repo.repo
    paths = ["README.md", "src/app.py", "src/util.py", "z_old.txt"]
    head = repo[repo.head.target].peel(pygit2.Commit)
    assert least_recent_first(paths, last_changes(repo, head)) == [
        "src/util.py",
        "z_old.txt",
        "src/app.py",
        "README.md",
    ]


def test_a_first_epoch_walked_in_parts_orders_files_as_one_walk_would(git_repo: GitRepo) -> None:
    """The build splits the history walk into parts; a long history crosses their boundaries."""
    commits = -(-HISTORY_WINDOW // WALK_PARTS) + 10  # the first part and ten commits of the second
    for number in range(commits):
        git_repo.write(f"f{number % 7}.txt", f"{number}\n")
        if number == 3:
            git_repo.write("rare.txt", "changed in the second part only\n")
        if number % 50 == 0:
            git_repo.write("often.txt", f"{number}\n")  # last changed in the first part, earlier in both
        git_repo.commit(f"commit {number}")
    repo = git_repo.repo
    head = repo[repo.head.target].peel(pygit2.Commit)
    rules = ContentRules.from_config(Config())
    snapshot = build_snapshot(git_repo.path, str(head.id), rules, 10**9, None)
    ages = last_changes(repo, head)
    assert ages["rare.txt"] >= -(-HISTORY_WINDOW // WALK_PARTS) and ages["often.txt"] < 50
    assert list(snapshot.order) == least_recent_first([entry for entry, _ in snapshot.inlined], ages)
    changed = [path for path in snapshot.order if path in ages]  # after the files the window never saw
    assert changed[0] == "rare.txt" and changed[1] == "often.txt" and changed[-1] == f"f{(commits - 1) % 7}.txt"


def test_carry_order_moves_changed_and_new_files_to_the_end() -> None:
    previous = ["a", "b", "c", "d"]
    assert carry_order(previous, {"b", "new"}, ["a", "b", "c", "d", "new"], {}) == ["a", "c", "d", "b", "new"]
    assert carry_order(previous, {"c"}, ["a", "b", "d"], {}) == ["a", "b", "d"]  # c deleted
    ages = {"b": 0, "c": 3, "new": 1}  # b changed in the last commit, c three commits before
    assert carry_order(previous, {"b", "c", "new"}, ["a", "b", "c", "d", "new"], ages) == ["a", "d", "c", "new", "b"]
