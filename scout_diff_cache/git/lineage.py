"""Which commits the working diff shows, one group each, between the snapshot's base and HEAD.

The diff is a log: the net changes from the base up to an *anchor* (a fold point, or the first
HEAD seen on another line of history) as one group, then one group per step from the anchor to
HEAD. When HEAD moves, the lineage is extended from the HEAD last shown, so every group already
shown keeps its bytes: a commit, a pull, a merge of a branch already shown (the step from its
tip to the merge commit holds only what the merge changed), a reset back to a shown commit. Only
when HEAD jumps where no short path leads (another branch, a rebase, an amend) is the lineage
found again: the first-parent line from HEAD back to the anchor or the base, else a new anchor at
HEAD. Every walk is bounded by a constant, whatever the size of the graph.

Any base gives a faithful diff, ancestor of HEAD or not: a group is a tree-to-tree difference.
"""

from __future__ import annotations

import attrs
import pygit2

#: Most steps shown one by one: whole multiples of it are folded, so the fold point moves rarely.
COMMIT_GROUPS = 200
#: Most commits looked at to find how HEAD moved on from the HEAD last shown.
STEP_SEARCH = COMMIT_GROUPS
#: Most first-parent commits walked from HEAD back to the anchor or the base.
LINE_SEARCH = 10 * COMMIT_GROUPS


@attrs.frozen
class Lineage:
    base: str
    #: Where the net group ends: the base itself when there is none.
    anchor: str
    #: First-parent commits from the base to the anchor; None when the anchor is on another line.
    anchor_commits: int | None
    #: (from, to) commit ids, oldest first: one group each; the last `to` is HEAD.
    steps: tuple[tuple[str, str], ...] = ()

    @property
    def head(self) -> str:
        return self.steps[-1][1] if self.steps else self.anchor


def trace(
    repo: pygit2.Repository, base: pygit2.Commit, head: pygit2.Commit, previous: Lineage | None, anchor: str | None
) -> Lineage:
    """The lineage for HEAD: `previous` extended or cut where HEAD moved along it, else found afresh."""
    base_id, head_id = str(base.id), str(head.id)
    if previous is not None and previous.base == base_id and previous.anchor == (anchor or base_id):
        if previous.head == head_id:
            return previous
        path = _path(repo, previous.head, head)
        if path is not None:
            return _bounded(attrs.evolve(previous, steps=previous.steps + path))
        shown = [to for _, to in previous.steps]
        if head_id in shown:  # a reset back to a commit already shown
            return attrs.evolve(previous, steps=previous.steps[: shown.index(head_id) + 1])
        if head_id == previous.anchor:
            return attrs.evolve(previous, steps=())
    return _bounded(_afresh(repo, base, head, anchor))


def _path(repo: pygit2.Repository, start: str, head: pygit2.Commit) -> tuple[tuple[str, str], ...] | None:
    """Steps from `start` to HEAD through parents (breadth first, so the shortest), or None."""
    came_from: dict[str, str | None] = {str(head.id): None}
    frontier = [head]
    while frontier and len(came_from) <= STEP_SEARCH:
        following = []
        for commit in frontier:
            for parent in commit.parents:
                key = str(parent.id)
                if key in came_from:
                    continue
                came_from[key] = str(commit.id)
                if key == start:
                    steps = []
                    current: str | None = key
                    while current is not None and came_from[current] is not None:
                        child = came_from[current]
                        assert child is not None
                        steps.append((current, child))
                        current = child
                    return tuple(steps)
                following.append(parent)
        frontier = following
    return None


def _afresh(repo: pygit2.Repository, base: pygit2.Commit, head: pygit2.Commit, anchor: str | None) -> Lineage:
    base_id = str(base.id)
    chain = _first_parents(head, {base_id} if anchor is None else {base_id, anchor}, LINE_SEARCH)
    if chain is None:  # HEAD is on another line: the net change from the base, then steps from here
        return Lineage(base_id, str(head.id), _commits_between(repo, base_id, head))
    reached, steps = chain
    if reached == base_id:
        return Lineage(base_id, base_id, 0, steps)
    start = repo[reached].peel(pygit2.Commit)
    return Lineage(base_id, reached, _commits_between(repo, base_id, start), steps)


def _first_parents(
    head: pygit2.Commit, targets: set[str], limit: int
) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The first target on HEAD's first-parent line, and the steps from it to HEAD, oldest first."""
    steps: list[tuple[str, str]] = []
    current = head
    while str(current.id) not in targets:
        if not current.parents or len(steps) >= limit:
            return None
        parent = current.parents[0]
        steps.append((str(parent.id), str(current.id)))
        current = parent
    return str(current.id), tuple(reversed(steps))


def _commits_between(repo: pygit2.Repository, base: str, anchor: pygit2.Commit) -> int | None:
    found = _first_parents(anchor, {base}, LINE_SEARCH)
    return len(found[1]) if found is not None else None


def _bounded(lineage: Lineage) -> Lineage:
    """Past COMMIT_GROUPS steps, whole multiples of it join the net group (on the first-parent line)."""
    cut = len(lineage.steps) // COMMIT_GROUPS * COMMIT_GROUPS
    if not cut:
        return lineage
    known = lineage.anchor_commits
    return Lineage(
        lineage.base, lineage.steps[cut - 1][1], known + cut if known is not None else None, lineage.steps[cut:]
    )
