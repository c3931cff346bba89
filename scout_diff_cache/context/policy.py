"""When to keep an epoch, fold its diff, rebase, or go back to a remembered epoch: pure arithmetic.

To a prefix cache, keeping the base costs nothing but prompt length (the diff only grows at its
end), while a rebase recomputes the snapshot from its first changed file on. So the diff gets a
*budget* of prompt growth, a share of the snapshot; only past it does anything move.
"""

from __future__ import annotations

from collections.abc import Mapping


def budget(snapshot_bytes: int, share: float, floor: int) -> float:
    """The bytes the diff may grow to before keeping the epoch stops paying."""
    return max(floor, share * snapshot_bytes)


def outgrown(diff_bytes: int, head_moved: bool, limit: float) -> bool:
    """Only commits can outgrow an epoch: uncommitted work is in the diff whatever the base."""
    return head_moved and diff_bytes > limit


def fold_pays(net: int, rebase: int, limit: float) -> bool:
    """Whether folding the commits' groups into their net changes beats a rebase.

    A fold makes the upstream re-read the net diff (`net` bytes) and leaves `limit - net` for the
    diff to grow; a rebase re-reads the snapshot from its first changed file on (`rebase` bytes)
    and leaves all of `limit`. So a fold pays when net / (limit - net) < rebase / limit: typically
    when the same files changed commit after commit, so that their log is many times the net change.
    """
    return net < limit and net * limit < rebase * (limit - net)


#: How much of the budget a remembered epoch's diff to HEAD may take for a switch back to it.
RECALL_SHARE = 0.1


def closest_remembered(net_bytes: Mapping[str, int], limit: float) -> str | None:
    """The remembered epoch whose diff to HEAD is smallest, if it is small: a tenth of the budget.

    Switching back costs nothing only while the upstream still holds that snapshot, which nothing
    here can know; a branch switched back to has a diff near zero, while an epoch whose diff would
    nearly fill the budget would be outgrown again soon, each time re-read in full if it was evicted
    meanwhile. Beyond that share, a new epoch at HEAD (an empty diff) is the better bet.
    """
    fitting = {base: size for base, size in net_bytes.items() if size <= RECALL_SHARE * limit}
    return min(fitting, key=lambda base: (fitting[base], base)) if fitting else None
