"""When to keep an epoch, fold its diff, rebase, or go back to a remembered epoch: pure arithmetic.

To a prefix cache, keeping the base costs nothing but prompt length (the diff only grows at its
end), while a rebase recomputes the snapshot from its first changed file on. So the diff gets a
*budget* of prompt growth, a share of the snapshot (and no more than the diff's part of the
upstream's window, see `split.py`); only past it does anything move.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..git.snapshot import Snapshot


def budget(snapshot_bytes: int, share: float, floor: int) -> float:
    """The bytes the diff may grow to before keeping the epoch stops paying."""
    return max(floor, share * snapshot_bytes)


#: Bytes a token is taken to hold when the snapshot's tokens were not counted (few: errs short).
CAUTIOUS_BYTES_PER_TOKEN = 3.0


def window_limit(snapshot: Snapshot) -> float:
    """The diff's part of the window the snapshot was fitted to, in bytes at the snapshot's own
    bytes per token: past it, the commits in the diff move into a new snapshot."""
    per_token = snapshot.text_bytes / snapshot.tokens if snapshot.tokens else CAUTIOUS_BYTES_PER_TOKEN
    return (snapshot.diff_budget or 0) * per_token


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


@attrs.frozen
class Plan:
    """What a request does with a reading of the served epoch (see `plan`)."""

    #: "reread": the epoch switched while the diff was read; "switch": move to HEAD now, then read
    #: again; "serve": serve the diff read.
    action: str
    #: The diff's net group ends elsewhere than the state file says: save it, so a restart renders the same.
    anchor_moved: bool = False
    #: The commits outgrew the epoch: fold them, or else rebase in the background (and serve meanwhile).
    outgrown: bool = False


def plan(
    mode: str,
    *,
    on_served: bool,
    usable: bool,
    base: str | None,
    head: str | None,
    anchor: str | None,
    folded: str | None,
    diff_bytes: int,
    limit: float,
) -> Plan:
    """Decide for a reading made `on_served` (against the snapshot still served) under `[context]
    rebase = mode`: of a `usable` base, with HEAD at `head`, its net group ending at `anchor` while
    the state file says `folded`, and a diff of `diff_bytes` against the budget `limit`."""
    if not on_served:
        return Plan("reread")
    if not usable or (mode == "every-commit" and head != base):
        return Plan("switch")
    return Plan("serve", anchor != folded, mode == "auto" and outgrown(diff_bytes, head != base, limit))
