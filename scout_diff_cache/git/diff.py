"""The working diff: everything between the snapshot's base commit and the working tree.

It is laid out so that it only ever changes at its end while work goes on, because a prefix cache
keeps everything before the first byte that differs:

    # Working diff
    <fixed explanation>
    <changes>                                              optional: the net changes of the
    === the changes above were made in N commits up to C0 ===  commits up to a fold point
    <changes>                                              one group per commit since then,
    === the changes above were committed as C1: summary ===   oldest first
    <changes>
    === the changes above were committed as C2: summary ===
    <changes>                                              staged, unstaged and untracked changes
    === the changes above are not committed yet ===        against HEAD
    === snapshot commit B; HEAD is H ===

A change is a header, `=== file: PATH [modified, mode 100644 -> 100755] ===` (kind file, symlink or
submodule; status added, deleted or modified; details), then unified hunks whose `@@` lines always
carry both counts, so a parser never searches the text for delimiters (the README gives the
grammar). Both sides are the texts the snapshot would show (see `content.py`), so applying every
group to the snapshot gives the work tree.

Within a group, files are ordered by modification time in the working tree (the file being edited
is last), then path; deleted files first. Labels follow their group, so when the uncommitted changes
are committed the bytes stay the same up to the new label: a commit costs a few tokens, an edit
costs only what follows the edited file. A commit's group lists its files in the order they were
last shown uncommitted, and is rendered once and kept, so later edits never reorder it (a restarted
process orders it by the mtimes it then finds). Every file renders the same whichever diff found it
(binary and oversized files included). The uncommitted group asks libgit2's index-assisted diffs
(HEAD tree → index, then index → working tree with the index's stat cache) only which paths to look
at, then reads each of those paths from HEAD and from the work tree: each request touches only what
the stat cache says changed.

A fold (chosen in `context/folding.py`, kept with the epoch) turns the groups of the commits up to a fold
point into one group of their net changes, files least recently changed first: an order history
fixes, so a restarted process renders it the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import DiffOption

from ..encoding import encode_text
from ..errors import RepositoryError
from .content import Side, Stub, cannot_open, path_text, shown, spell, tree_side, worktree_side
from .lineage import Lineage
from .order import last_changes, least_recent_first
from .repository import ContentRules, base_tree
from .secrets import Finding, redact

FLAGS = (
    DiffOption.INCLUDE_UNTRACKED
    | DiffOption.RECURSE_UNTRACKED_DIRS
    | DiffOption.SHOW_UNTRACKED_CONTENT
    | DiffOption.INCLUDE_TYPECHANGE
)

NO_NEWLINE = "\\ No newline at end of file\n"

#: The detail of a change whose old contents were not shown: its one hunk holds all of its text.
WHOLE_TEXT = "whole text"

#: Commits whose changes order a net group from another line of history (a bounded walk).
NET_WINDOW = 100

HEADER = """\
# Working diff

These are the changes from the snapshot's commit to the working tree as it is now, in the order \
they happened: a group for each commit made since the snapshot, then what is not committed yet \
(staged, unstaged and new untracked files). Each group is followed by a line saying where it comes \
from. Each change starts with a line "=== file: PATH [STATUS, DETAILS] ===" (or symlink, or \
submodule), STATUS being added, deleted or modified, followed by unified diff hunks whose "@@" lines \
count their lines; a deleted file has none, and "contents not shown" says why there are none. \
"whole text" marks a file whose earlier contents were not shown: its one hunk holds all of its \
text. A later change of a file applies on top of the earlier ones. Where this differs from the \
snapshot, this is the current state.

"""

CLEAN = """\
# Working diff

No changes: the working tree matches the snapshot's commit.
"""


#: A path (as the model reads it) that could not be read, and why (see `Side.unreadable`).
Unreadable = tuple[str, str]


@attrs.frozen
class WorkingDiff:
    base: str | None
    head: str | None
    files: int
    text_bytes: int
    #: The text, JSON-encoded (without quotes): each API puts its own envelope around it.
    json_text: bytes = attrs.field(repr=False)
    #: Secrets found in the diffs; a finding's line counts within that file's diff text.
    findings: tuple[Finding, ...] = attrs.field(default=(), repr=False)
    #: The uncommitted files in the order shown: committing them keeps that order.
    uncommitted: tuple[str, ...] = attrs.field(default=(), repr=False)
    #: What the work tree holds (None: nothing) at each path where it differs from HEAD.
    worktree: Mapping[str, Side | None] = attrs.field(factory=dict, repr=False)
    #: (path, why) of every entry the diffs could not read, shown as a stub.
    unreadable: tuple[Unreadable, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class Group:
    """Rendered diffs of one commit (or of the uncommitted changes), with their label."""

    text: str
    paths: tuple[str, ...]  # in the order shown
    findings: tuple[Finding, ...] = ()
    unreadable: tuple[Unreadable, ...] = ()


def committed_groups(
    repo: pygit2.Repository,
    lineage: Lineage,
    rules: ContentRules,
    rendered: dict[str, Group],
    shown: WorkingDiff | None,
) -> list[Group]:
    """The lineage's groups: the net changes up to its anchor, then one group per step, oldest first.

    `rendered` keeps each group once made (per base: the base's snapshot decides what stays a
    stub), so it never changes while this process runs. A commit
    made on top of the uncommitted changes in the diff last `shown` lists its files in that order,
    whatever was edited since: it changes only its label.
    """
    groups = []
    if lineage.anchor != lineage.base:
        groups.append(_net_group(repo, lineage, rules, rendered))
    for parent_id, commit_id in lineage.steps:
        key = f"{lineage.base}: step {parent_id}..{commit_id}"
        if key not in rendered:
            parent, commit = repo[parent_id].peel(pygit2.Commit), repo[commit_id].peel(pygit2.Commit)
            first = shown.uncommitted if shown is not None and parent_id == shown.head else ()
            changes = _tree_changes(repo, parent.tree, commit.tree, rules)
            rendered[key] = _group(
                repo, changes, rules, f"were committed as {commit_id}: {_summary(commit, rules)}", first
            )
        groups.append(rendered[key])
    return groups


def _summary(commit: pygit2.Commit, rules: ContentRules) -> str:
    """The first line of the commit's message, its secrets redacted as in files."""
    lines = commit.message.strip().splitlines()
    summary = lines[0] if lines else ""
    return redact("", summary)[0] if rules.secrets != "off" else summary


def _net_group(repo: pygit2.Repository, lineage: Lineage, rules: ContentRules, rendered: dict[str, Group]) -> Group:
    """base → anchor as one group, least recently changed file first: an order history fixes, so a
    restarted process renders the same bytes."""
    key = f"{lineage.base}: net to {lineage.anchor}"
    if key not in rendered:
        base, anchor = repo[lineage.base].peel(pygit2.Commit), repo[lineage.anchor].peel(pygit2.Commit)
        changes = _tree_changes(repo, base.tree, anchor.tree, rules)
        if lineage.anchor_commits is None:
            label = f"were made since {lineage.base} on another line of history"
            ages = last_changes(repo, anchor, window=NET_WINDOW)
        else:
            label = f"were made in {lineage.anchor_commits} commits up to {lineage.anchor}"
            ages = last_changes(repo, anchor, base.id)
        first = least_recent_first({path for path, _, _ in changes}, ages)
        rendered[key] = _group(repo, changes, rules, label, tuple(first))
    return rendered[key]


def working_diff(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    head: pygit2.Commit | None,
    rules: ContentRules,
    committed: list[Group],
) -> WorkingDiff:
    """The committed groups plus what is not committed yet, as one text. Blocking."""
    changes = worktree_changes(repo, head, rules)
    uncommitted = _group(repo, changes, rules, "are not committed yet")
    base_id = str(base.id) if base is not None else None
    head_id = str(head.id) if head is not None else None
    groups = [*committed, uncommitted]
    files = sum(len(group.paths) for group in groups)
    text = (HEADER + "".join(group.text for group in groups) if files else CLEAN) + _footer(base_id, head_id)
    findings = tuple(finding for group in groups for finding in group.findings)
    return WorkingDiff(
        base_id,
        head_id,
        files,
        len(text.encode("utf-8")),
        encode_text(text),
        findings,
        uncommitted.paths,
        {path: new for path, _, new in changes},
        tuple(entry for group in groups for entry in group.unreadable),
    )


Change = tuple[str, "Side | None", "Side | None"]


def _tree_changes(repo: pygit2.Repository, old: pygit2.Tree, new: pygit2.Tree, rules: ContentRules) -> list[Change]:
    paths: set[str] = set()
    for delta in old.diff_to_tree(new).deltas:
        paths.update((delta.old_file.path, delta.new_file.path))
    return [(path, tree_side(repo, old, path, rules), tree_side(repo, new, path, rules)) for path in paths]


def worktree_changes(repo: pygit2.Repository, head: pygit2.Commit | None, rules: ContentRules) -> list[Change]:
    """HEAD → work tree, path by path: the index and its stat cache only say which paths to look at.

    Each path's new side is what the work tree holds now, whatever the index says: a file removed
    from the index but still on disk is there, a conflicted file shows its conflict markers.
    """
    try:
        index = repo.index
        tree = base_tree(repo, head)
        paths = _delta_paths(tree.diff_to_index(index, FLAGS)) | _workdir_paths(repo, index)
        if index.conflicts is not None:
            for entries in index.conflicts:
                paths.update(entry.path for entry in entries if entry is not None)
        changes = []
        for path in paths:
            old = tree_side(repo, tree, path, rules)
            new = worktree_side(repo, path, rules, _tracked_mode(index, path, old))
            if _differs(old, new):
                changes.append((path, old, new))
    except (pygit2.GitError, OSError) as error:  # a file rewritten while libgit2 hashed it, say
        raise RepositoryError(f"cannot read the working tree of {repo.workdir}: {error}") from None
    return changes


def _differs(old: Side | None, new: Side | None) -> bool:
    """Whether a path's change is shown: its sides differ, or may (a file too large to read). An
    unreadable side is all there is to say of it: the same again is no change."""
    return old != new or (old is not None and old.data is None and old.unreadable is None)


def _delta_paths(diff: pygit2.Diff) -> set[str]:
    return {path for delta in diff.deltas for path in (delta.old_file.path, delta.new_file.path)}


def _workdir_paths(repo: pygit2.Repository, index: pygit2.Index) -> set[str]:
    """The paths libgit2's index → work tree diff names. It hashes a file its stat cache cannot
    vouch for (touched, or racily clean), and one it cannot open fails the whole diff: then the
    tracked files that cannot be opened leave the index, in memory only (it is never written), so
    that the diff lists them as untracked, and they are read (as stubs) like any other path."""
    try:
        return _delta_paths(index.diff_to_workdir(FLAGS))
    except (pygit2.GitError, OSError):
        locked = {entry.path for entry in index if cannot_open(repo.workdir, entry.path)}
        if not locked:
            raise
        for path in locked:
            index.remove(path)
        return _delta_paths(index.diff_to_workdir(FLAGS)) | locked


def _tracked_mode(index: pygit2.Index, path: str, old: Side | None) -> int | None:
    try:
        return index[path].mode
    except (KeyError, ValueError, pygit2.GitError):
        return old.mode if old is not None else None


def _group(
    repo: pygit2.Repository, changes: list[Change], rules: ContentRules, origin: str, first: tuple[str, ...] = ()
) -> Group:
    """The changes, the paths in `first` in that order, then oldest edit first; then the label."""
    root = Path(repo.workdir)
    rank = {path: n for n, path in enumerate(first)}
    ordered = sorted(changes, key=lambda change: (rank.get(change[0], len(rank)), _edited(change, root)))
    texts, paths, findings, unreadable = [], [], [], []
    for path, old, new in ordered:
        name = path_text(path)  # the rules see what the model reads
        text, found = render_change(name, old, new, rules)
        findings += found
        if text:
            texts.append(text)
            paths.append(path)
            unreadable += [(name, side.unreadable) for side in (old, new) if side is not None and side.unreadable]
    if not texts:
        return Group("", (), tuple(findings))
    label = f"=== the changes above {origin} ===\n"
    return Group("".join(texts) + label, tuple(paths), tuple(findings), tuple(unreadable))


def _edited(change: Change, root: Path) -> tuple[int, str]:
    """Oldest edit first: the file someone is working on right now sorts last.

    A deleted file has no time of its own; it sorts first, so it is re-read once when deleted
    rather than after every later edit.
    """
    path, _, new = change
    if new is None:
        return (0, path)
    try:
        return (os.lstat(root / path).st_mtime_ns, path)
    except OSError:  # deleted from the working tree meanwhile
        return (0, path)


def render_change(path: str, old: Side | None, new: Side | None, rules: ContentRules) -> tuple[str, list[Finding]]:
    """One path's change: a header, then hunks of the screened texts (none for a stub or a deletion).

    Both sides are screened whole before they are compared, so a hunk's context never carries a
    secret and a redacted multi-line secret is one line on both sides: the counts stay true. A stub
    describes the file as it is now, never the old side. A file whose old contents were not shown
    has no text for hunks to apply to: when it can be shown now, its whole text is. A file renders
    the same whichever diff found it, so a commit leaves the bytes of its group as they were.
    """
    if rules.exclude.excludes(path) or (old is None and new is None):
        return "", []
    if old is not None and new is not None and old.kind != new.kind:
        gone, _ = render_change(path, old, None, rules)
        added, found = render_change(path, None, new, rules)
        return gone + added, found
    side = new or old
    assert side is not None
    status = "added" if old is None else "deleted" if new is None else "modified"
    details = []
    if old is not None and new is not None and old.mode != new.mode:
        details.append(f"mode {old.mode:o} -> {new.mode:o}")
    elif old is None and side.executable:
        details.append("executable")
    if new is None:
        return _header(side.kind, path, status, details), []
    text, found = shown(new, path, rules)
    if not isinstance(text, Stub) and old is not None and path in rules.over_cap:
        text = Stub("not in the snapshot", f"{new.size} bytes")
    if isinstance(text, Stub):
        return _header(side.kind, path, status, [*details, f"contents not shown: {text}"]), found
    before = shown(old, path, rules)[0] if old is not None else ""
    if isinstance(before, Stub):  # nothing for hunks to apply to: all of it, as for an added file
        if new.executable and not details:
            details.append("executable")
        return _header(side.kind, path, status, [*details, WHOLE_TEXT]) + _hunks("", text), found
    hunks = _hunks(before, text)
    if not hunks and not details and old is not None:
        return "", found  # the same text once screened and cleaned
    return _header(side.kind, path, status, details) + hunks, found


def _header(kind: str, path: str, status: str, details: list[str]) -> str:
    return f"=== {kind}: {spell(path)} [{', '.join([status, *details])}] ===\n"


def _hunks(old: str, new: str) -> str:
    """Unified hunks with explicit counts and no function heading (it would repeat a line unscreened)."""
    old_bytes, new_bytes = old.encode(), new.encode()  # the patch points into them: keep them alive
    patch = pygit2.Patch.create_from(old_bytes, new_bytes, flag=DiffOption.FORCE_TEXT, context_lines=3)
    out = []
    for hunk in patch.hunks:
        out.append(f"@@ -{hunk.old_start},{hunk.old_lines} +{hunk.new_start},{hunk.new_lines} @@\n")
        for line in hunk.lines:
            if line.origin not in " -+":
                continue  # libgit2's own end-of-file markers: written below, after their line
            content = line.raw_content.decode("utf-8")
            out.append(f"{line.origin}{content}" if content.endswith("\n") else f"{line.origin}{content}\n{NO_NEWLINE}")
    return "".join(out)


def _footer(base: str | None, head: str | None) -> str:
    if base == head and base is not None:
        return f"=== snapshot commit {base}; HEAD is the same commit ===\n"
    return f"=== snapshot commit {base or 'none'}; HEAD is {head or 'unborn'} ===\n"


#: The label of a change message's one group.
CHANGED_SINCE = "were made in the work tree since it was last shown"

CHANGES_HEADER = """\
# Work tree changes

These are the changes made in the working tree since it was last shown in this conversation, in \
the same form as the working diff. They apply on top of the snapshot, the working diff and every \
earlier message like this one.

"""


def change_message(
    repo: pygit2.Repository,
    base: pygit2.Commit | None,
    shown: Mapping[str, Side | None],
    now: Mapping[str, Side | None],
    rules: ContentRules,
) -> str | None:
    """The change from the work tree as a conversation last `shown` it to the work tree `now` (both
    given where they differ from `base`); None when nothing visible changed."""
    tree = base_tree(repo, base)
    changes = []
    for path in set(shown) | set(now):
        old = shown[path] if path in shown else tree_side(repo, tree, path, rules)
        new = now[path] if path in now else tree_side(repo, tree, path, rules)
        if _differs(old, new):
            changes.append((path, old, new))
    group = _group(repo, changes, rules, CHANGED_SINCE)
    return CHANGES_HEADER + group.text if group.text else None
