"""The libgit2 side of epochs: reading HEAD, building snapshots and diffs, pricing folds and rebases.

Every method here blocks and runs in a worker thread with a repository handle of its own (libgit2
objects are not shared between threads). What is rendered once (each commit's group, the lineage
of the last diff, the order its uncommitted files were shown in) is kept here and touched only by
these threads: a cache is replaced whole, never cleared from the event loop under a reader's feet.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pygit2

from ..errors import RepositoryError
from .content import Side, tree_side
from .diff import Group, WorkingDiff, change_message, committed_groups, working_diff, worktree_changes
from .epoch import Epoch
from .lineage import Lineage, trace
from .order import changed_paths
from .repository import ContentRules, head_commit, opened, repository_key
from .snapshot import Fit, Snapshot, build_snapshot
from .workers import Workers

#: What the work tree holds (None: nothing) at each path where it differs from a base commit.
WorkState = dict[str, "Side | None"]


@attrs.frozen
class Reading:
    """The repository as one thread read it, against the snapshot it was given."""

    base: str | None
    head: str | None
    #: False when the base cannot serve: gone from the repository, or unborn while HEAD is not.
    usable: bool
    diff: WorkingDiff | None = None
    #: Where the diff's net group ends (see `lineage.py`); None when there is none.
    anchor: str | None = None
    #: What the work tree holds where it differs from the base (None: nothing), as the diff shows it.
    state: WorkState = attrs.field(factory=dict, repr=False)


class RepositoryReader:
    """Reads one repository under fixed content rules, keeping what it rendered per base commit."""

    def __init__(
        self, path: Path, rules: ContentRules, max_snapshot_bytes: int, workers: Workers | None = None
    ) -> None:
        self.path = path
        self.rules = rules
        self._max_snapshot_bytes = max_snapshot_bytes
        self.workers = workers or Workers()
        self._base: str | None = None
        self._rendered: dict[str, Group] = {}
        self._lineage: Lineage | None = None
        self._shown: WorkingDiff | None = None  # the last diff read: a commit keeps its file order
        self._committed: tuple[str, str, WorkState] | None = None  # base, HEAD, what HEAD changed

    def head(self) -> str | None:
        with opened(self.path) as repo:
            commit = head_commit(repo)
        return str(commit.id) if commit is not None else None

    def usable(self, base: str | None) -> bool:
        with opened(self.path) as repo:
            return _commits(repo, base, head_commit(repo)) is not None

    def repository_key(self, known: tuple[str, str] | None = None) -> str | None:
        """The repository's name (see `repository_key`, and `known` there); None before its first commit."""
        with opened(self.path) as repo:
            head = head_commit(repo)
            return repository_key(repo, head, known) if head is not None else None

    def build(
        self, commit: str | None, previous: Epoch | None, reuse: Snapshot | None = None, fit: Fit | None = None
    ) -> Snapshot:
        """The snapshot of `commit`, taking from `reuse` every section of an unchanged entry, with
        what `fit` leaves out over the window."""
        return build_snapshot(
            self.path,
            commit,
            self.rules,
            self._max_snapshot_bytes,
            previous,
            workers=self.workers,
            reuse=reuse,
            fit=fit,
        )

    def close(self) -> None:
        """Stop the worker processes, if a build started them (blocking)."""
        self.workers.close()

    def read(self, snapshot: Snapshot, anchor: str | None) -> Reading:
        """HEAD and the working diff against `snapshot`, its net group ending at `anchor`."""
        with opened(self.path) as repo:
            head = head_commit(repo)
            head_id = str(head.id) if head is not None else None
            commits = _commits(repo, snapshot.commit, head)
            if commits is None:
                return Reading(snapshot.commit, head_id, False)
            base, head = commits
            rules = self.rules_for(snapshot)
            groups: list[Group] = []
            anchored = None
            if base is not None and head is not None:
                self._keep_only(str(base.id))
                lineage = self._lineage = trace(repo, base, head, self._lineage, anchor)
                groups = committed_groups(repo, lineage, rules, self._rendered, self._shown)
                anchored = lineage.anchor if lineage.anchor != lineage.base else None
            diff = self._shown = working_diff(repo, base, head, rules, groups)
            state = {**self._committed_state(repo, base, head), **diff.worktree}
            return Reading(snapshot.commit, head_id, True, diff, anchored, state)

    def state(self, snapshot: Snapshot) -> WorkState | None:
        """The work tree where it differs from `snapshot`'s base; None when that base cannot serve."""
        with opened(self.path) as repo:
            commits = _commits(repo, snapshot.commit, head_commit(repo))
            if commits is None:
                return None
            base, head = commits
            worktree = {path: new for path, _, new in worktree_changes(repo, head, self.rules_for(snapshot))}
            return {**self._committed_state(repo, base, head), **worktree}

    def changes(self, snapshot: Snapshot, shown: WorkState, now: WorkState) -> str | None:
        """The change message from the work tree as `shown` to the work tree `now` (see `diff.py`)."""
        with opened(self.path) as repo:
            base = repo.get(snapshot.commit) if snapshot.commit is not None else None
            assert base is None or isinstance(base, pygit2.Commit)
            return change_message(repo, base, shown, now, self.rules_for(snapshot))

    def diff(self, snapshot: Snapshot) -> WorkingDiff:
        """The working diff against `snapshot` with no fold (a warm-up of a new epoch, a preview)."""
        reading = self.read(snapshot, None)
        if reading.diff is None:
            raise RepositoryError(f"commit {snapshot.commit} is no longer in the repository")
        return reading.diff

    def costs(self, snapshot: Snapshot, head_id: str) -> tuple[int, int]:
        """Bytes the upstream re-reads after a fold (the net diff) and after a rebase (the snapshot's tail)."""
        assert snapshot.commit is not None
        with opened(self.path) as repo:
            base, head = repo[snapshot.commit].peel(pygit2.Commit), repo[head_id].peel(pygit2.Commit)
            net = self.net_bytes((snapshot,), head_id)[snapshot.commit]
            changed = changed_paths(base.tree, head.tree)
            first = next((n for n, (path, _) in enumerate(snapshot.inlined) if path in changed), len(snapshot.inlined))
            return net, sum(size for _, size in snapshot.inlined[first:])

    def net_bytes(self, snapshots: tuple[Snapshot, ...], head_id: str) -> dict[str, int]:
        """For each snapshot, the bytes of its net change to HEAD, as the diff would show it."""
        with opened(self.path) as repo:
            head = repo[head_id].peel(pygit2.Commit)
            sizes: dict[str, int] = {}
            for snapshot in snapshots:
                base = repo.get(snapshot.commit) if snapshot.commit is not None else None
                if isinstance(base, pygit2.Commit):
                    lineage = trace(repo, base, head, None, head_id)
                    groups = committed_groups(repo, lineage, self.rules_for(snapshot), dict(self._rendered), None)
                    sizes[str(base.id)] = sum(len(group.text.encode("utf-8")) for group in groups)
            return sizes

    def rules_for(self, snapshot: Snapshot) -> ContentRules:
        """The diff's rules for an epoch: what its snapshot left out for its cap stays a stub."""
        return attrs.evolve(self.rules, over_cap=snapshot.over_cap)

    def _committed_state(
        self, repo: pygit2.Repository, base: pygit2.Commit | None, head: pygit2.Commit | None
    ) -> WorkState:
        """HEAD's side of every path the commits since `base` changed (kept for the last base and HEAD)."""
        if base is None or head is None or base.id == head.id:
            return {}
        key = (str(base.id), str(head.id))
        cached = self._committed
        if cached is None or cached[:2] != key:
            paths = changed_paths(base.tree, head.tree)
            state = {path: tree_side(repo, head.tree, path, self.rules) for path in paths}
            cached = self._committed = (*key, state)
        return cached[2]

    def _keep_only(self, base: str) -> None:
        """Groups rendered for other bases are of no more use once a base is read again."""
        if base != self._base:
            self._rendered = {key: group for key, group in self._rendered.items() if key.startswith(base)}
            self._base = base


def _commits(
    repo: pygit2.Repository, base_id: str | None, head: pygit2.Commit | None
) -> tuple[pygit2.Commit | None, pygit2.Commit | None] | None:
    """The base and HEAD commits, or None when the base cannot serve."""
    found = repo.get(base_id) if base_id is not None else None
    base = found if isinstance(found, pygit2.Commit) else None
    if (base_id is not None and base is None) or (base is None) != (head is None):
        return None
    return base, head
