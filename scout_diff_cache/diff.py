"""The working diff: everything between the snapshot's base commit and the working tree.

It is laid out so that it only ever grows at its end while work goes on, because a prefix cache
keeps everything before the first byte that changes:

    # Working diff
    <fixed explanation>
    === commit C1: summary ===        one section per commit since the base, oldest first,
    <unified diffs, path order>       each written once and never changed afterwards
    === commit C2: summary ===
    ...
    === not committed yet ===         staged, unstaged and untracked changes against HEAD,
    <unified diffs, oldest edit first> ordered by modification time: the file being edited is last
    === snapshot commit B; HEAD is H ===

A commit appends a section; an edit changes only the tail of the last one. Committed sections come
from tree-to-tree diffs, computed once per HEAD. The uncommitted part uses libgit2's index-assisted
diff (HEAD tree → index, then index → working tree with the index's stat cache), so each request
touches only what the stat cache says changed, never hashing the whole working tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import DeltaStatus, DiffOption

from .errors import RepositoryError
from .prompt import system_message
from .repository import ContentRules, base_tree

FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.SHOW_UNTRACKED_CONTENT
    | DiffOption.INCLUDE_TYPECHANGE
)

#: Commits since the base shown one by one; older ones are folded into one section.
COMMIT_SECTIONS = 200

HEADER = """\
# Working diff

These are the changes from the snapshot's commit to the working tree as it is now, as unified \
diffs in the order they happened: one section for each commit made since the snapshot, then what \
is not committed yet (staged, unstaged and new untracked files). A later diff of a file applies on \
top of the earlier ones. Where this differs from the snapshot, this is the current state.

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


@attrs.frozen
class History:
    """The committed sections between a base and HEAD: fixed text, rendered once per HEAD."""

    text: str
    files: int


def committed_history(
    repo: pygit2.Repository, base: pygit2.Commit | None, head: pygit2.Commit | None, rules: ContentRules
) -> History:
    """One section per first-parent commit from base (excluded) to HEAD, oldest first."""
    if head is None or base is None or base.id == head.id:
        return History("", 0)
    chain: list[pygit2.Commit] = []
    current = head
    while current.id != base.id:
        if not current.parents or len(chain) > 10 * COMMIT_SECTIONS:  # base off HEAD's first-parent line
            return _history([(f"changes since {base.id}", base.tree, head.tree)], repo, rules)
        chain.append(current)
        current = current.parents[0]
    chain.reverse()
    sections = []
    if len(chain) > COMMIT_SECTIONS:
        folded, chain = chain[:-COMMIT_SECTIONS], chain[-COMMIT_SECTIONS:]
        sections.append((f"{len(folded)} older commits up to {folded[-1].id}", base.tree, folded[-1].tree))
    for commit in chain:
        summary = commit.message.strip().splitlines()[0] if commit.message.strip() else ""
        sections.append((f"commit {commit.id}: {summary}", commit.parents[0].tree, commit.tree))
    return _history(sections, repo, rules)


def _history(sections: list[tuple[str, pygit2.Tree, pygit2.Tree]], repo: pygit2.Repository, rules: ContentRules) -> History:
    parts = []
    files = 0
    for title, old, new in sections:
        diff = old.diff_to_tree(new)
        patches = [text for i, delta in enumerate(diff.deltas) if (text := _patch(diff, delta, i, rules))]
        files += len(patches)
        parts.append(f"=== {title} ===\n" + "".join(patches))
    return History("".join(parts), files)


def working_diff(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    head: pygit2.Commit | None,
    rules: ContentRules,
    history: History,
) -> WorkingDiff:
    """The committed history plus what is not committed yet, as one system message. Blocking."""
    try:
        index = repo.index
        diff = base_tree(repo, head).diff_to_index(index, FLAGS)
        diff.merge(index.diff_to_workdir(FLAGS))
        root = Path(repo.workdir)
        deltas = list(diff.deltas)
        ordered = sorted(range(len(deltas)), key=lambda i: _edited(deltas[i], root))
        patches = [text for i in ordered if (text := _patch(diff, deltas[i], i, rules))]
    except (pygit2.GitError, OSError) as error:
        raise RepositoryError(f"cannot compute the working diff in {repo.workdir}: {error}") from None
    base_id = str(base.id) if base is not None else None
    head_id = str(head.id) if head is not None else None
    if history.text or patches:
        uncommitted = "=== not committed yet ===\n" + "".join(patches) if patches else "=== not committed yet: nothing ===\n"
        text = HEADER + history.text + uncommitted
    else:
        text = CLEAN
    text += _footer(base_id, head_id)
    return WorkingDiff(base_id, head_id, history.files + len(patches), len(text.encode("utf-8")), system_message(text))


def _edited(delta: pygit2.DiffDelta, root: Path) -> tuple[int, str]:
    """Oldest edit first: the file someone is working on right now sorts last."""
    path = _path(delta)
    try:
        return (os.lstat(root / path).st_mtime_ns, path)
    except OSError:  # deleted from the working tree
        return (sys.maxsize, path)


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
