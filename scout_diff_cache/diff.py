"""The working diff: base tree → index → working tree, as unified-diff text.

libgit2 computes it in two index-assisted steps (base tree → index, then index → working tree with
the index's stat cache) merged into one diff, as `git diff <base>` would show plus the full
contents of untracked, not-ignored files. A tree → working-tree walk would hash every file in the
repository on every request; this touches only what the stat cache says changed.
"""

from __future__ import annotations

from typing import Iterator

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

HEADER = """\
# Working diff

Changes in the working tree against {against}: staged, unstaged and new untracked files, as \
unified diffs in path order. Where this differs from the snapshot, this is the current state.

"""

CLEAN = """\
# Working diff

No changes: the working tree matches {against}.
"""


@attrs.frozen
class WorkingDiff:
    base: str | None
    files: int
    text_bytes: int
    message: bytes = attrs.field(repr=False)


def working_diff(repo: pygit2.Repository, base: pygit2.Commit | None, rules: ContentRules) -> WorkingDiff:
    """Everything the working tree holds that the base commit does not. Blocking."""
    against = f"the snapshot's commit {base.id}" if base is not None else "an empty repository (no commits yet)"
    try:
        index = repo.index
        diff = base_tree(repo, base).diff_to_index(index, FLAGS)
        diff.merge(index.diff_to_workdir(FLAGS))
        patches = [text for text in _patches(diff, rules) if text]
    except (pygit2.GitError, OSError) as error:
        raise RepositoryError(f"cannot compute the working diff in {repo.workdir}: {error}") from None
    text = HEADER.format(against=against) + "".join(patches) if patches else CLEAN.format(against=against)
    base_id = str(base.id) if base is not None else None
    return WorkingDiff(base_id, len(patches), len(text.encode("utf-8")), system_message(text))


def _patches(diff: pygit2.Diff, rules: ContentRules) -> Iterator[str]:
    for i, delta in enumerate(diff.deltas):
        path = delta.new_file.path if delta.status != DeltaStatus.DELETED else delta.old_file.path
        if rules.exclude.excludes(path):
            continue
        size = max(delta.new_file.size, delta.old_file.size)
        if size > rules.max_file_bytes:
            yield f"diff --git a/{path} b/{path}\n({delta.status.name.lower()}, {size} bytes: over max_file_bytes, contents not shown)\n"
            continue
        patch = diff[i]
        yield patch.data.decode("utf-8", "replace") if patch is not None else ""
