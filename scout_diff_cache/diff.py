"""The working diff: everything between the snapshot's base commit and the working tree.

It is laid out so that it only ever changes at its end while work goes on, because a prefix cache
keeps everything before the first byte that differs:

    # Working diff
    <fixed explanation>
    <unified diffs>                                        optional: the net changes of the
    === the changes above were made in N commits up to C0 ===  commits up to a fold point
    <unified diffs>                                        one group per commit since then,
    === the changes above were committed as C1: summary ===   oldest first
    <unified diffs>
    === the changes above were committed as C2: summary ===
    <unified diffs>                                        staged, unstaged and untracked changes
    === the changes above are not committed yet ===        against HEAD
    === snapshot commit B; HEAD is H ===

Within a group, files are ordered by modification time in the working tree (the file being edited
is last), then path; deleted files first. Labels follow their group, so when the uncommitted changes
are committed the bytes stay the same up to the new label: a commit costs a few tokens, an edit
costs only what follows the edited file. A commit's group lists its files in the order they were
last shown uncommitted, and is rendered once and kept, so later edits never reorder it (a restarted
process orders it by the mtimes it then finds). Every file renders the same whichever diff found it
(binary and oversized files included). The uncommitted group uses libgit2's index-assisted diff
(HEAD tree → index, then index → working tree with the index's stat cache): each request touches
only what the stat cache says changed.

A fold (chosen in `context.py`, kept with the epoch) turns the groups of the commits up to a fold
point into one group of their net changes, files least recently changed first: an order history
fixes, so a restarted process renders it the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import DeltaStatus, DiffFlag, DiffOption, FileMode

from .errors import RepositoryError
from .order import last_changes, least_recent_first
from .prompt import system_message
from .repository import ContentRules, base_tree
from .secrets import Finding

FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.SHOW_UNTRACKED_CONTENT
    | DiffOption.INCLUDE_TYPECHANGE
)

#: Most commits shown one by one: whole multiples of it are folded, so the fold point moves rarely.
COMMIT_GROUPS = 200

HEADER = """\
# Working diff

These are the changes from the snapshot's commit to the working tree as it is now, as unified \
diffs in the order they happened: a group for each commit made since the snapshot, then what is \
not committed yet (staged, unstaged and new untracked files). Each group is followed by a line \
saying where it comes from. A later diff of a file applies on top of the earlier ones. Where this \
differs from the snapshot, this is the current state.

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
    #: Secrets found in the diffs; a finding's line counts within that file's diff text.
    findings: tuple[Finding, ...] = attrs.field(default=(), repr=False)
    #: The uncommitted files in the order shown: committing them keeps that order.
    uncommitted: tuple[str, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class Group:
    """Rendered diffs of one commit (or of the uncommitted changes), with their label."""

    text: str
    paths: tuple[str, ...]  # in the order shown
    findings: tuple[Finding, ...] = ()


def committed_groups(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    head: pygit2.Commit | None,
    rules: ContentRules,
    rendered: dict[str, Group],
    shown: WorkingDiff | None,
    folded: str | None = None,
) -> list[Group]:
    """One group per first-parent commit from base (excluded) to HEAD, oldest first.

    The commits up to `folded` (and, past COMMIT_GROUPS commits, whole multiples of it) are one
    group of their net changes instead. `rendered` keeps each group once made, so it never changes
    while this process runs. A commit made on top of the uncommitted changes in the diff last
    `shown` lists its files in that order, whatever was edited since: it changes only its label.
    """
    if head is None or base is None or base.id == head.id:
        return []
    chain: list[pygit2.Commit] = []
    current = head
    while current.id != base.id:
        if not current.parents or len(chain) > 10 * COMMIT_GROUPS:  # base off HEAD's first-parent line
            return [_net_group(repo, base, head, rules, rendered, f"were made since {base.id}")]
        chain.append(current)
        current = current.parents[0]
    chain.reverse()
    ids = [str(commit.id) for commit in chain]
    cut = max(ids.index(folded) + 1 if folded in ids else 0, len(chain) // COMMIT_GROUPS * COMMIT_GROUPS)
    groups = []
    if cut:
        label = f"were made in {cut} commits up to {chain[cut - 1].id}"
        groups.append(_net_group(repo, base, chain[cut - 1], rules, rendered, label))
    for commit in chain[cut:]:
        key = str(commit.id)
        if key not in rendered:
            summary = commit.message.strip().splitlines()[0] if commit.message.strip() else ""
            diff = commit.parents[0].tree.diff_to_tree(commit.tree)
            first = shown.uncommitted if shown is not None and str(commit.parents[0].id) == shown.head else ()
            rendered[key] = _group(repo, diff, rules, f"were committed as {commit.id}: {summary}", first)
        groups.append(rendered[key])
    return groups


def _net_group(
    repo: pygit2.Repository, base: pygit2.Commit, upto: pygit2.Commit, rules: ContentRules,
    rendered: dict[str, Group], label: str,
) -> Group:
    """base → upto as one group, least recently changed file first: an order history fixes, so a
    restarted process renders the same bytes."""
    key = f"{base.id}..{upto.id}"
    if key not in rendered:
        diff = base.tree.diff_to_tree(upto.tree)
        first = least_recent_first({_path(delta) for delta in diff.deltas}, last_changes(repo, upto, base.id))
        rendered[key] = _group(repo, diff, rules, label, tuple(first))
    return rendered[key]


def working_diff(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    head: pygit2.Commit | None,
    rules: ContentRules,
    committed: list[Group],
) -> WorkingDiff:
    """The committed groups plus what is not committed yet, as one system message. Blocking."""
    try:
        index = repo.index
        diff = base_tree(repo, head).diff_to_index(index, FLAGS)
        diff.merge(index.diff_to_workdir(FLAGS))
        uncommitted = _group(repo, diff, rules, "are not committed yet")
    except (pygit2.GitError, OSError) as error:
        raise RepositoryError(f"cannot compute the working diff in {repo.workdir}: {error}") from None
    base_id = str(base.id) if base is not None else None
    head_id = str(head.id) if head is not None else None
    groups = [*committed, uncommitted]
    files = sum(len(group.paths) for group in groups)
    text = (HEADER + "".join(group.text for group in groups) if files else CLEAN) + _footer(base_id, head_id)
    findings = tuple(finding for group in groups for finding in group.findings)
    return WorkingDiff(
        base_id, head_id, files, len(text.encode("utf-8")), system_message(text), findings, uncommitted.paths
    )


def _group(
    repo: pygit2.Repository, diff: pygit2.Diff, rules: ContentRules, origin: str, first: tuple[str, ...] = ()
) -> Group:
    """The diffs, the paths in `first` in that order, then oldest edit first; then the label."""
    root = Path(repo.workdir)
    deltas = list(diff.deltas)
    rank = {path: n for n, path in enumerate(first)}
    ordered = sorted(
        range(len(deltas)), key=lambda i: (rank.get(_path(deltas[i]), len(rank)), _edited(deltas[i], root))
    )
    patches, paths, findings = [], [], []
    for i in ordered:
        text, found = _patch(repo.odb, diff, deltas[i], i, rules)
        findings += found
        if text:
            patches.append(text)
            paths.append(_path(deltas[i]))
    if not patches:
        return Group("", (), tuple(findings))
    return Group("".join(patches) + f"=== the changes above {origin} ===\n", tuple(paths), tuple(findings))


def _edited(delta: pygit2.DiffDelta, root: Path) -> tuple[int, str]:
    """Oldest edit first: the file someone is working on right now sorts last.

    A deleted file has no time of its own; it sorts first, so it is re-read once when deleted
    rather than after every later edit.
    """
    path = _path(delta)
    try:
        return (os.lstat(root / path).st_mtime_ns, path)
    except OSError:  # deleted from the working tree
        return (0, path)


def _path(delta: pygit2.DiffDelta) -> str:
    return delta.old_file.path if delta.status == DeltaStatus.DELETED else delta.new_file.path


def _patch(
    odb: pygit2.Odb, diff: pygit2.Diff, delta: pygit2.DiffDelta, i: int, rules: ContentRules
) -> tuple[str, list[Finding]]:
    """One file's diff text, screened for secrets, and what was found in it.

    A file renders the same whichever diff found it (the uncommitted changes, then the same change
    committed), so a commit leaves the bytes of its group as they were.
    """
    path = _path(delta)
    if rules.exclude.excludes(path):
        return "", []
    stub = f"diff --git a/{path} b/{path}\n({delta.status.name.lower()}, {{}}, contents not shown)\n"
    if rules.secret_by_name(path):
        return stub.format("a secret by its name"), []
    size = max(_size(odb, delta.new_file), _size(odb, delta.old_file))
    if size > rules.max_file_bytes:
        return stub.format(f"{size} bytes: over max_file_bytes"), []
    patch = diff[i]
    if patch is None:
        return "", []
    screened, found = rules.screen(path, patch.data.decode("utf-8", "replace"))
    return (screened if screened is not None else stub.format(f"holds {len(found)} secrets")), found


def _size(odb: pygit2.Odb, file: pygit2.DiffFile) -> int:
    """The file's size in bytes; a diff between two trees leaves it unset until the patch is made.

    A submodule's commit is not in this repository's object database: its size stays as given.
    """
    if file.flags & DiffFlag.VALID_SIZE or not file.flags & DiffFlag.EXISTS or file.mode == FileMode.COMMIT:
        return file.size
    return odb.read_header(file.id)[1]


def _footer(base: str | None, head: str | None) -> str:
    if base is None and head is None:
        return "=== the repository has no commits yet ===\n"
    if base == head:
        return f"=== snapshot commit {base}; HEAD is the same commit ===\n"
    return f"=== snapshot commit {base or 'none'}; HEAD is {head or 'unborn'} ===\n"
