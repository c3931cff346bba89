"""Epochs: which snapshot is served, when it moves, and what each request gets injected.

An epoch is a base commit with its snapshot. It outlives commits: after a commit the same snapshot
is served and the working diff (base → working tree) carries what was committed, so the upstream's
cache of the snapshot stays valid. The epoch moves (a rebase) when keeping it stops paying, per
`[context] rebase`:

- `auto`: when HEAD has moved and the diff outgrows its budget (`policy.py`). If it makes the
  upstream re-read less, the commits' groups are *folded* into one group of their net changes and
  the snapshot stays. Otherwise the new snapshot is built and warmed upstream in the background
  while the old epoch keeps serving; then the switch is atomic.
- `every-commit`: on every new HEAD, before answering (the original design, for comparison).
- `manual`: only when asked (`POST /admin/rebase`, `scout-diff-cache rebase`).

Any base gives a faithful diff, an ancestor of HEAD or not (another branch, a rebase, an amend):
the diff shows the net change from it (see `git/lineage.py`), and the budget decides as above. Only a
base that is gone from the repository is replaced at once. The last `remembered_epochs` snapshots
stay in memory: a rebase to one of their commits, or to one whose diff to HEAD fits the budget (a
branch switched back to), reuses it byte for byte instead of building.
"""

from __future__ import annotations

import asyncio
import time

import attrs

from ..config import Config, ContextConfig
from ..errors import RepositoryError
from ..git.diff import WorkingDiff
from ..git.reader import Reading, RepositoryReader, WorkState
from ..git.repository import ContentRules
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from ..shared import SharedTasks
from ..usage import Usage
from .building import AfterBuild, Builder, Prepare, Warmer
from .folding import Folder
from .notices import Notices
from .policy import Plan, plan
from .served import Served
from .statefile import StateFile
from .switcher import Rebase, Switcher

__all__ = ["EpochStatus", "Epochs", "Injection", "Prepare", "Rebase", "Warmer", "reader_for"]


@attrs.frozen
class Injection:
    """What one request gets in front of its messages: the snapshot and a fresh working diff."""

    snapshot: Snapshot
    diff: WorkingDiff
    #: The work tree where it differs from the snapshot's base, as the diff shows it.
    state: WorkState = attrs.field(factory=dict, repr=False)


@attrs.frozen
class EpochStatus:
    """The epochs as `/health`, readiness and systemd's STATUS line tell them."""

    #: "building", "failed", "ready" or "not built".
    state: str
    snapshot: Snapshot | None
    last_rebase: Rebase | None
    remembered: tuple[str, ...]
    last_error: str | None


def reader_for(config: Config) -> RepositoryReader:
    """The reader of the configured repository under its content rules."""
    repository = config.repository
    return RepositoryReader(repository.path, ContentRules.from_config(config), repository.max_snapshot_bytes)


class Epochs:
    """The epoch being served and its life cycle, put together from pieces with one job each: the
    served epoch and its reading (`Served`), starting and switching (`Switcher`, building with
    `Builder`), folding (`Folder`), the state file (`StateFile`), what is logged (`Notices`). What to
    do with each reading is decided by `policy.plan`. Every task started ends with `close()`."""

    def __init__(
        self,
        reader: RepositoryReader,
        config: Config,
        metrics: Metrics,
        warmer: Warmer | None = None,
        after_build: AfterBuild | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self._served = Served(reader, config.context, metrics)
        self._state_file = StateFile.under(config.context.state_dir, reader.path)
        self._notices = Notices(metrics, reader.rules.secrets)
        self._builder = Builder(reader, metrics, self._notices, warmer, after_build, prepare)
        self._switcher = Switcher(self._served, self._builder, self._state_file, metrics)
        self._folder = Folder(self._served, self._state_file, metrics, self._switcher.busy)
        self._warming = SharedTasks()
        self._fitting: int | None = None
        self.last_request = 0.0

    def configure(self, terms: ContextConfig) -> None:
        """Take new context settings (a reload); the next request follows them."""
        self._served.configure(terms)

    async def close(self) -> None:
        await self._switcher.close()
        await self._warming.close()
        await self._served.close()

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot served now (None before the first is built)."""
        return self._served.snapshot

    def status(self) -> EpochStatus:
        if self._switcher.busy():
            state = "building"
        elif self._builder.last_error is not None:
            state = "failed"
        else:
            state = "ready" if self._served.snapshot is not None else "not built"
        served = self._served
        return EpochStatus(
            state, served.snapshot, self._switcher.last_rebase, served.remembered.bases, self._builder.last_error
        )

    def snapshot_of(self, base: str | None) -> Snapshot | None:
        """The snapshot of `base` while the proxy still holds it: the current epoch or a remembered one."""
        return self._served.snapshot_of(base)

    def budget(self, snapshot: Snapshot) -> float:
        """The bytes a diff (or a conversation's changes) may grow to on `snapshot`."""
        return self._served.budget(snapshot)

    async def inject(self) -> Injection:
        """The snapshot and a diff read after this call began, consistent with each other; on the
        way, whatever `policy.plan` decides of each reading is done (switch, save, fold)."""
        self.last_request = time.monotonic()
        failure: RepositoryError | None = None
        for attempt in range(4):
            await self.start()
            try:
                reading = await self._served.current()
            except RepositoryError as error:  # a file that vanished mid-read, say: read again
                failure = error
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            step = self._plan(reading)
            if step.action == "switch":
                await self._switcher.switch_to(reading.head, prewarm=False)
            if step.action != "serve":
                continue
            snapshot = self._served.snapshot
            assert snapshot is not None and reading.diff is not None
            if step.anchor_moved:  # the diff's net group moved: a restart must render the same
                self._served.folded = reading.anchor
                await self._state_file.save(self._served.epoch(snapshot))
            if step.outgrown:
                if await self._folder.fold(snapshot, reading):
                    continue  # read again, with one group for the commits
                self._switcher.switch_in_background(reading.head)
            self._notices.served(reading.diff)
            return Injection(snapshot, reading.diff, reading.state)
        if failure is not None:
            raise failure
        raise RepositoryError("the repository kept changing while its state was read; try again")

    def _plan(self, reading: Reading) -> Plan:
        snapshot, served = self._served.snapshot, self._served
        return plan(
            served.terms.rebase,
            on_served=snapshot is not None and reading.base == snapshot.commit,
            usable=reading.usable,
            base=reading.base,
            head=reading.head,
            anchor=reading.anchor,
            folded=served.folded,
            diff_bytes=reading.diff.text_bytes if reading.diff is not None else 0,
            limit=served.budget(snapshot) if snapshot is not None else 0.0,
        )

    async def start(self) -> Snapshot:
        """The first epoch: the saved one if it is still usable (same bytes as before a restart)."""
        return await self._switcher.start()

    def fit_to(self, budget: int | None) -> None:
        """Fit the served snapshot to `budget` tokens (the snapshot's part of the window now) in
        the background, if it was fitted to another or to none; None (no window known) changes nothing."""
        snapshot = self._served.snapshot
        if budget is None or snapshot is None or snapshot.commit is None or budget in (snapshot.budget, self._fitting):
            return
        self._fitting = budget  # tried once per window: a build that fails is not tried per request
        self._switcher.refit_in_background()

    async def rebase(self) -> Rebase:
        """A manual rebase to HEAD, warmed upstream before the switch."""
        head = await asyncio.to_thread(self._served.reader.head)
        snapshot = self._served.snapshot
        if snapshot is not None and head == snapshot.commit:
            return Rebase(head, head, None, 0.0)
        return await self._switcher.switch_to(head, prewarm=True)

    def repository_key(self) -> str | None:
        """The repository's name for routers (see `repository_key`), found from the one the state
        file kept when its base is on HEAD's line (as a build finds it). Blocking."""
        saved = self._state_file.load()
        return self._served.reader.repository_key(saved.named if saved is not None else None)

    async def warm_now(self) -> Usage | None:
        """Send the current prefix upstream once (keep-alive pings); None without a warmer."""
        return await self._builder.warm_now(await self.start())

    async def warm_shared(self) -> Usage | None:
        """`warm_now`, shared by every caller that asks while one is under way."""
        return await self._warming.join("warm", self.warm_now)

    async def preview(self) -> Injection:
        """What a server started now would send, without saving or switching anything."""
        base, saved = await self._switcher.first_base()
        snapshot = await self._builder.preview(base, saved)
        return Injection(snapshot, await asyncio.to_thread(self._served.reader.diff, snapshot))
