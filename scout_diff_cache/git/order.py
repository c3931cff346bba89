"""The order of files in the snapshot, chosen so that a rebase invalidates as little as possible.

A prefix cache keeps everything before the first byte that differs. So the snapshot's files are
not in path order but in order of stability:

- The first epoch (no earlier order known) puts files that did not change in the last
  `HISTORY_WINDOW` first-parent commits first, in path byte order, then the files that did change,
  least recently changed first (ties in path order). Cost: one tree-to-tree diff per commit in the
  window, so bounded however long the history is (about a second for 1,000 commits of git/git).
- Every rebase keeps the previous order for every file that did not change between the two bases,
  and moves the changed and added files to the end, least recently changed first (a file changed
  in the last commit is the likeliest to change again); deleted files drop out. So a rebase keeps,
  byte for byte, every file before the first one that changed, and files that change often drift
  toward the end. Cost: one tree-to-tree diff per commit between the two bases (at most the window).

The order is stored with the base in the state file (see `context/statefile.py`), so a restarted process
renders the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pygit2

HISTORY_WINDOW = 1000


def _key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def changed_paths(old: pygit2.Tree, new: pygit2.Tree) -> set[str]:
    """Paths whose blob differs between two trees (added, deleted and modified)."""
    paths = set()
    for delta in old.diff_to_tree(new).deltas:
        paths.add(delta.old_file.path)
        paths.add(delta.new_file.path)
    return paths


def last_changes(
    repo: pygit2.Repository,
    commit: pygit2.Commit,
    since: pygit2.Oid | None = None,
    window: int = HISTORY_WINDOW,
    start: int = 0,
) -> dict[str, int]:
    """How many first-parent commits ago each path last changed, within the window and after `since`,
    looking only at the commits from `start` back (a part of the walk; the parts' union is the whole)."""
    ages: dict[str, int] = {}
    current = commit
    for age in range(window):  # parent by parent: a sorted walk would first visit the whole graph
        if current.id == since or not current.parents:
            break
        parent = current.parents[0]
        if age >= start:
            for path in changed_paths(parent.tree, current.tree):
                ages.setdefault(path, age)  # newest first: the first sighting is the last change
        current = parent
    return ages


def least_recent_first(paths: Iterable[str], ages: dict[str, int]) -> list[str]:
    """Paths not changed in the window first, then by last change, oldest first; ties in path order."""
    return sorted(paths, key=lambda path: (-ages.get(path, HISTORY_WINDOW), _key(path)))


def carry_order(previous: Sequence[str], changed: set[str], paths: Iterable[str], ages: dict[str, int]) -> list[str]:
    """The previous order for unchanged files, then changed and new files, least recently changed first."""
    present = set(paths)
    kept = [path for path in previous if path in present and path not in changed]
    kept_set = set(kept)
    return kept + least_recent_first((path for path in present if path not in kept_set), ages)
