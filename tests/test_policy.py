"""The epoch policy's arithmetic, and the pool of remembered epochs, as plain values."""

from __future__ import annotations

from scout_diff_cache.context.policy import Plan, budget, closest_remembered, fold_pays, outgrown, plan
from scout_diff_cache.context.remembered import EpochPool
from scout_diff_cache.git.snapshot import Snapshot


def test_the_budget_is_a_share_of_the_snapshot_with_a_floor() -> None:
    assert budget(10_000_000, 0.5, 262_144) == 5_000_000
    assert budget(100_000, 0.5, 262_144) == 262_144


def test_only_a_moved_head_can_outgrow_the_epoch() -> None:
    assert outgrown(1_001, head_moved=True, limit=1_000)
    assert not outgrown(1_000, head_moved=True, limit=1_000)
    assert not outgrown(10**9, head_moved=False, limit=1_000)  # uncommitted work is there whatever the base


def test_a_fold_pays_when_the_net_change_is_small_against_the_rebase() -> None:
    # net 100 of a 1,000 budget leaves 900: 100/900 < 500/1000
    assert fold_pays(net=100, rebase=500, limit=1_000)
    # a rebase that re-reads little wins: 100/900 > 50/1000
    assert not fold_pays(net=100, rebase=50, limit=1_000)
    # a net change as large as the budget never folds
    assert not fold_pays(net=1_000, rebase=10**9, limit=1_000)


def test_the_closest_remembered_epoch_with_a_small_diff_is_chosen() -> None:
    assert closest_remembered({"a" * 40: 300, "b" * 40: 200, "c" * 40: 5_000}, limit=10_000) == "b" * 40
    assert closest_remembered({"a" * 40: 300, "b" * 40: 300}, limit=10_000) == "a" * 40  # ties: by id
    assert closest_remembered({"a" * 40: 900}, limit=5_000) is None  # fits the budget, but would soon fill it
    assert closest_remembered({}, limit=10_000) is None


def snapshot_of(base: str) -> Snapshot:
    return Snapshot(base, (), 0, (), (), (), (), ())


def test_the_pool_keeps_the_newest_epochs_within_its_capacity() -> None:
    pool = EpochPool(2)
    for base in ("a", "b", "c"):
        pool.keep(snapshot_of(base))
    assert pool.bases == ("b", "c")  # the oldest went first
    assert pool.take("b") is not None and pool.bases == ("c",)  # served again: out of the pool
    assert pool.get("c") is not None and pool.get(None) is None and pool.take("gone") is None
    pool.keep(snapshot_of("d"))
    pool.resize(1)
    assert pool.bases == ("d",)


def step(
    mode: str, *, on_served: bool = True, usable: bool = True, head: str = "a", anchor: str | None = None, diff: int = 0
) -> Plan:
    """The plan for a reading against base "a", nothing folded yet, with a budget of 10 bytes."""
    return plan(
        mode,
        on_served=on_served,
        usable=usable,
        base="a",
        head=head,
        anchor=anchor,
        folded=None,
        diff_bytes=diff,
        limit=10,
    )


def test_a_reading_against_a_snapshot_no_longer_served_is_read_again() -> None:
    assert step("auto", on_served=False) == Plan("reread")
    assert step("auto") == Plan("serve")


def test_a_base_that_cannot_serve_or_a_new_head_under_every_commit_switches_first() -> None:
    assert step("auto", usable=False, head="b") == Plan("switch")
    assert step("every-commit", head="b") == Plan("switch")
    assert step("manual", head="b") == Plan("serve")


def test_only_auto_acts_on_an_outgrown_diff_and_a_moved_anchor_is_saved() -> None:
    assert step("auto", head="b", anchor="c", diff=11) == Plan("serve", anchor_moved=True, outgrown=True)
    assert step("manual", head="b", diff=11) == Plan("serve")
    assert step("auto", diff=11) == Plan("serve")  # uncommitted work never outgrows the epoch
