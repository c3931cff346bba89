"""The working diff: base tree → index → working tree, as unified-diff text.

libgit2 computes it in two index-assisted steps (base tree → index, then index → working tree with
the index's stat cache) merged into one diff: everything committed since the base, staged and
unstaged changes, and the full contents of untracked, not-ignored files. A tree → working-tree
walk would hash every file on every request; this touches only what the stat cache says changed.

Files are ordered oldest change first, so the diff's own prefix stays cached while one file is
being edited: changes committed since the base come first, by the time of the last commit that
touched them; then working-tree changes (staged, unstaged, untracked) by modification time. What
changes between commits (the ids) is on the last line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

import attrs
import pygit2
from pygit2.enums import DeltaStatus, DiffOption, SortMode

from .errors import RepositoryError
from .prompt import system_message
from .repository import ContentRules, base_tree

FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.SHOW_UNTRACKED_CONTENT
    | DiffOption.INCLUDE_TYPECHANGE
)

#: Commits walked to date the changes committed since the base; older ones sort first.
COMMIT_WALK_LIMIT = 1000

HEADER = """\
# Working diff

These are the changes from the snapshot's commit to the working tree as it is now: commits made \
since the snapshot, staged and unstaged changes, and new untracked files, as unified diffs, the \
oldest change first. Where this differs from the snapshot, this is the current state.

"""

CLEAN = """\
# Working diff

No changes: the working tree matches the snapshot's commit.
"""


@attrs.frozen
class WorkingDiff:
    base: str | None
    head: str | None
    files: int
    text_bytes: int
    message: bytes = attrs.field(repr=False)


def committed_since(repo: pygit2.Repository, base: pygit2.Commit | None, head: pygit2.Commit | None) -> dict[str, int]:
    """Path → time of the newest commit between base and HEAD that touched it."""
    if head is None or base is None or base.id == head.id:
        return {}
    walker = repo.walk(head.id, SortMode.TOPOLOGICAL | SortMode.TIME)
    walker.hide(base.id)
    times: dict[str, int] = {}
    for count, commit in enumerate(walker):
        if count >= COMMIT_WALK_LIMIT:
            break
        before = commit.parents[0].tree if commit.parents else base_tree(repo, None)
        for delta in before.diff_to_tree(commit.tree).deltas:
            times.setdefault(delta.new_file.path, commit.commit_time)
            times.setdefault(delta.old_file.path, commit.commit_time)
    return times


def working_diff(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    head: pygit2.Commit | None,
    rules: ContentRules,
    committed: Mapping[str, int],
) -> WorkingDiff:
    """Everything the working tree holds that the base commit does not. Blocking."""
    try:
        index = repo.index
        to_workdir = index.diff_to_workdir(FLAGS)
        staged = base_tree(repo, head).diff_to_index(index, FLAGS)
        working = {_path(delta) for delta in to_workdir.deltas} | {_path(delta) for delta in staged.deltas}
        same_commit = (base.id if base else None) == (head.id if head else None)
        diff = staged if same_commit else base_tree(repo, base).diff_to_index(index, FLAGS)
        diff.merge(to_workdir)
        root = Path(repo.workdir)
        deltas = list(diff.deltas)
        ordered = sorted(range(len(deltas)), key=lambda i: _age(deltas[i], root, working, committed))
        patches = [text for i in ordered if (text := _patch(diff, deltas[i], i, rules))]
    except (pygit2.GitError, OSError) as error:
        raise RepositoryError(f"cannot compute the working diff in {repo.workdir}: {error}") from None
    base_id = str(base.id) if base is not None else None
    head_id = str(head.id) if head is not None else None
    text = (HEADER + "".join(patches) if patches else CLEAN) + _footer(base_id, head_id)
    return WorkingDiff(base_id, head_id, len(patches), len(text.encode("utf-8")), system_message(text))


def _age(delta: pygit2.DiffDelta, root: Path, working: set[str], committed: Mapping[str, int]) -> tuple[int, int, str]:
    path = _path(delta)
    if path not in working:
        return (0, committed.get(path, 0), path)
    try:
        return (1, os.lstat(root / path).st_mtime_ns, path)
    except OSError:  # deleted from the working tree
        return (1, sys.maxsize, path)


def _path(delta: pygit2.DiffDelta) -> str:
    return delta.old_file.path if delta.status == DeltaStatus.DELETED else delta.new_file.path


def _patch(diff: pygit2.Diff, delta: pygit2.DiffDelta, i: int, rules: ContentRules) -> str:
    path = _path(delta)
    if rules.exclude.excludes(path):
        return ""
    size = max(delta.new_file.size, delta.old_file.size)
    if size > rules.max_file_bytes:
        return f"diff --git a/{path} b/{path}\n({delta.status.name.lower()}, {size} bytes: over max_file_bytes, contents not shown)\n"
    patch = diff[i]
    return patch.data.decode("utf-8", "replace") if patch is not None else ""


def _footer(base: str | None, head: str | None) -> str:
    if base is None and head is None:
        return "=== the repository has no commits yet ===\n"
    if base == head:
        return f"=== snapshot commit {base}; HEAD is the same commit ===\n"
    return f"=== snapshot commit {base or 'none'}; HEAD is {head or 'unborn'} ===\n"
