"""The epochs kept after they ended: one bounded pool, oldest first out.

A branch switched back to reuses its snapshot byte for byte (the upstream may still hold it), and a
conversation that started on an earlier epoch keeps showing it; both take snapshots from here, so
the memory they cost is bounded by `[context] remembered_epochs` snapshots.
"""

from __future__ import annotations

from ..git.snapshot import Snapshot


class EpochPool:
    """Snapshots by base commit, oldest first, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._kept: dict[str, Snapshot] = {}

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(self._kept)

    @property
    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(self._kept.values())

    def get(self, base: str | None) -> Snapshot | None:
        return self._kept.get(base) if base is not None else None

    def take(self, base: str | None) -> Snapshot | None:
        """The snapshot of `base`, out of the pool (it is about to be served again)."""
        return self._kept.pop(base, None) if base is not None else None

    def keep(self, snapshot: Snapshot) -> None:
        if snapshot.commit is not None:
            self._kept.pop(snapshot.commit, None)
            self._kept[snapshot.commit] = snapshot
            self.resize(self._capacity)

    def resize(self, capacity: int) -> None:
        self._capacity = capacity
        while len(self._kept) > capacity:
            del self._kept[next(iter(self._kept))]
