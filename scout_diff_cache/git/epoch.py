"""A snapshot epoch: the base commit, the file order and the diff's fold point, which together fix
every byte the snapshot and the working diff render (`context/statefile.py` keeps it on disk)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Epoch:
    base: str | None
    order: tuple[str, ...]
    #: The commit up to which the working diff shows the net changes as one group (see `diff.py`).
    folded: str | None = None
    #: The repository's name in the base's snapshot (see `repository_key`): a restart takes it
    #: instead of walking the first-parent line to the first commit again (24,000 commits in git/git).
    key: str | None = None
    #: The files the snapshot left out over the window, once fitted to one (None: not fitted):
    #: the choice the next fit keeps, a restart's included (see `context/selection.py`).
    over_window: tuple[str, ...] | None = None

    @property
    def named(self) -> tuple[str, str] | None:
        """The base and the repository's name found from it, when both are known (see `repository_key`)."""
        return (self.base, self.key) if self.base and self.key else None
