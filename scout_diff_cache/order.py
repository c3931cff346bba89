"""The order of files in the snapshot, chosen so that a rebase invalidates as little as possible.

A prefix cache keeps everything before the first byte that differs. So the snapshot's files are
not in path order but in order of stability:

- The first epoch (no earlier order known) puts files that did not change in the last
  `HISTORY_WINDOW` first-parent commits first, in path byte order, then the files that did change,
  least recently changed first (ties in path order). Cost: one tree-to-tree diff per commit in the
  window, so bounded however long the history is (about a second for 1,000 commits of git/git).
- Every rebase keeps the previous order for every file that did not change between the two bases,
  and moves the changed and added files to the end (in path order); deleted files drop out. So a
  rebase keeps, byte for byte, every file before the first one that changed, and files that change
  often drift toward the end.

The order is stored with the base in the state file (see `epoch.py`), so a restarted process
renders the same bytes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pygit2
from pygit2.enums import SortMode

HISTORY_WINDOW = 1000


def _key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def changed_paths(repo: pygit2.Repository, old: pygit2.Tree, new: pygit2.Tree) -> set[str]:
    """Paths whose blob differs between two trees (added, deleted and modified)."""
    paths = set()
    for delta in old.diff_to_tree(new).deltas:
        paths.add(delta.old_file.path)
        paths.add(delta.new_file.path)
    return paths


def initial_order(repo: pygit2.Repository, commit: pygit2.Commit, paths: Iterable[str]) -> list[str]:
    """Stable files first, then recently changed ones, least recent first."""
    last_change: dict[str, int] = {}
    walker = repo.walk(commit.id, SortMode.TOPOLOGICAL)
    walker.simplify_first_parent()
    for age, current in enumerate(walker):
        if age >= HISTORY_WINDOW:
            break
        parent_tree = current.parents[0].tree if current.parents else None
        changed = changed_paths(repo, parent_tree, current.tree) if parent_tree is not None else set()
        for path in changed:
            last_change.setdefault(path, age)  # newest first: the first sighting is the last change
    stable = sorted((path for path in paths if path not in last_change), key=_key)
    recent = sorted((path for path in paths if path in last_change), key=lambda path: (-last_change[path], _key(path)))
    return stable + recent


def carry_order(previous: Sequence[str], changed: set[str], paths: Iterable[str]) -> list[str]:
    """The previous order for unchanged files, then changed and new files in path order."""
    present = set(paths)
    kept = [path for path in previous if path in present and path not in changed]
    kept_set = set(kept)
    moved = sorted((path for path in present if path not in kept_set), key=_key)
    return kept + moved
