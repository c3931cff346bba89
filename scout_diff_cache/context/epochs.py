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
the diff shows the net change from it (see `lineage.py`), and the budget decides as above. Only a
base that is gone from the repository is replaced at once. The last `remembered_epochs` snapshots
stay in memory: a rebase to one of their commits, or to one whose diff to HEAD fits the budget (a
branch switched back to), reuses it byte for byte instead of building.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import attrs

from ..config import Config, ContextConfig
from ..errors import ProxyError, RepositoryError
from ..git.content import UNREADABLE, spell
from ..git.diff import Unreadable, WorkingDiff
from ..git.epoch import Epoch
from ..git.reader import Reading, RepositoryReader, WorkState
from ..git.repository import ContentRules, short
from ..git.secrets import Finding
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from ..shared import Coalesced, SharedTasks
from ..usage import Usage
from .policy import budget, closest_remembered, fold_pays, outgrown
from .remembered import EpochPool
from .statefile import load_epoch, save_epoch, state_file

log = logging.getLogger(__name__)

#: How many unreadable entries (path, why) are remembered as logged and counted: each is noted once.
UNREADABLE_MEMO = 4096

#: Sends a snapshot and diff upstream once, so that its cache holds them (a warm-up).
Warmer = Callable[[Snapshot, WorkingDiff], Awaitable["Usage | None"]]


@attrs.frozen
class Injection:
    """What one request gets in front of its messages: the snapshot and a fresh working diff."""

    snapshot: Snapshot
    diff: WorkingDiff
    #: The work tree where it differs from the snapshot's base, as the diff shows it.
    state: WorkState = attrs.field(factory=dict, repr=False)


@attrs.frozen
class Rebase:
    previous: str | None
    base: str | None
    warmup: Usage | None
    seconds: float


class Epochs:
    """The epoch being served and its life cycle: the first epoch (saved across restarts), folds,
    rebases with warm-ups, remembered epochs. The repository is read by a `RepositoryReader` in
    worker threads; what to do is decided by the pure functions of `policy.py`; counts go to
    `Metrics`. Every task it starts is its own and ends with `close()`."""

    def __init__(self, config: Config, metrics: Metrics, warmer: Warmer | None = None) -> None:
        repository = config.repository
        self.reader = RepositoryReader(repository.path, ContentRules.from_config(config), repository.max_snapshot_bytes)
        self.warmer = warmer
        self._policy = config.context
        self._metrics = metrics
        self._state_file = state_file(config.context.state_dir, repository.path)
        self._switching = SharedTasks()  # the first epoch and every switch, by target
        self._reading = SharedTasks()
        self._warming = SharedTasks()
        self._read = Coalesced(self._read_current, self._reading)
        self._folded: str | None = None
        self.remembered = EpochPool(config.context.remembered_epochs)
        self._reported: tuple[Finding, ...] = ()
        self._unreadable: dict[Unreadable, None] = {}  # oldest first
        self.snapshot: Snapshot | None = None
        self.last_request = 0.0
        self.last_rebase: Rebase | None = None
        self.last_error: str | None = None

    def configure(self, policy: ContextConfig) -> None:
        """Take new context settings (a reload); the next request follows them."""
        self._policy = policy
        self.remembered.resize(policy.remembered_epochs)

    async def close(self) -> None:
        await self._switching.close()
        await self._reading.close()
        await self._warming.close()
        await asyncio.to_thread(self.reader.close)

    @property
    def state(self) -> str:
        if self._switching.busy():
            return "building"
        if self.last_error is not None:
            return "failed"
        return "ready" if self.snapshot is not None else "not built"

    def snapshot_of(self, base: str | None) -> Snapshot | None:
        """The snapshot of `base` while the proxy still holds it: the current epoch or a remembered one."""
        if self.snapshot is not None and self.snapshot.commit == base:
            return self.snapshot
        return self.remembered.get(base)

    async def current(self) -> Injection:
        """The snapshot and a diff read after this call began, consistent with each other."""
        self.last_request = time.monotonic()
        failure: RepositoryError | None = None
        for attempt in range(4):
            await self.start()
            try:
                reading = await self._read()
            except RepositoryError as error:  # a file that vanished mid-read, say: read again
                failure = error
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            snapshot = self.snapshot
            if snapshot is None or reading.base != snapshot.commit:
                continue  # the epoch switched while the diff was read against the old one
            if not reading.usable or (self._policy.rebase == "every-commit" and reading.head != reading.base):
                await self._switch_to(reading.head, prewarm=False)
                continue
            assert reading.diff is not None
            if reading.anchor != self._folded:  # the diff's net group moved: a restart must render the same
                self._folded = reading.anchor
                await self._save(snapshot)
            if self._policy.rebase == "auto" and self._outgrown(snapshot, reading):
                if await self._fold(snapshot, reading):
                    continue  # read again, with one group for the commits
                self._switch_in_background(reading.head)
            self._metrics.diff_bytes = reading.diff.text_bytes
            self._report_once(reading.diff.findings)
            self._note_unreadable(reading.diff.unreadable)
            return Injection(snapshot, reading.diff, reading.state)
        if failure is not None:
            raise failure
        raise RepositoryError("the repository kept changing while its state was read; try again")

    async def start(self) -> Snapshot:
        """The first epoch: the saved one if it is still usable (same bytes as before a restart)."""
        if self.snapshot is not None:
            return self.snapshot
        return await self._switching.join("start", self._start)

    async def rebase(self) -> Rebase:
        """A manual rebase to HEAD, warmed upstream before the switch."""
        head = await asyncio.to_thread(self.reader.head)
        if self.snapshot is not None and head == self.snapshot.commit:
            return Rebase(head, head, None, 0.0)
        return await self._switch_to(head, prewarm=True)

    def repository_key(self) -> str | None:
        """The repository's name for routers (see `repository_key`), found from the one the state
        file kept when its base is on HEAD's line (as a build finds it). Blocking."""
        saved = load_epoch(self._state_file, self.reader.path)
        return self.reader.repository_key(saved.named if saved is not None else None)

    async def warm_now(self) -> Usage | None:
        """Send the current prefix upstream once (keep-alive pings); None without a warmer."""
        snapshot = await self.start()
        if self.warmer is None:
            return None
        return await self.warmer(snapshot, await asyncio.to_thread(self.reader.diff, snapshot))

    async def warm_shared(self) -> Usage | None:
        """`warm_now`, shared by every caller that asks while one is under way."""
        return await self._warming.join("warm", self.warm_now)

    async def preview(self) -> Injection:
        """What a server started now would send, without saving or switching anything."""
        base, saved = await self._first_base()
        snapshot = await asyncio.to_thread(self.reader.build, base, saved)
        return Injection(snapshot, await asyncio.to_thread(self.reader.diff, snapshot))

    def _read_current(self) -> Reading:
        snapshot = self.snapshot
        if snapshot is None:
            return Reading(None, None, False)
        return self.reader.read(snapshot, self._folded)

    async def _first_base(self) -> tuple[str | None, Epoch | None]:
        """The saved base if still usable (not with every-commit), else HEAD; and the saved epoch."""
        saved = await asyncio.to_thread(load_epoch, self._state_file, self.reader.path)
        head = await asyncio.to_thread(self.reader.head)
        if (
            saved is not None
            and self._policy.rebase != "every-commit"
            and await asyncio.to_thread(self.reader.usable, saved.base)
        ):
            self._folded = saved.folded
            return saved.base, saved
        return head, saved

    async def _start(self) -> Snapshot:
        base, saved = await self._first_base()
        snapshot = await self._build(base, saved)
        if self.snapshot is None:
            self._serve(snapshot)
        await self._save(snapshot)
        return snapshot

    def _outgrown(self, snapshot: Snapshot, reading: Reading) -> bool:
        assert reading.diff is not None
        return outgrown(reading.diff.text_bytes, reading.head != reading.base, self.budget(snapshot))

    def budget(self, snapshot: Snapshot) -> float:
        """The bytes a diff (or a conversation's changes) may grow to on `snapshot`."""
        return budget(snapshot.text_bytes, self._policy.rebase_diff_share, self._policy.rebase_min_diff_bytes)

    async def _fold(self, snapshot: Snapshot, reading: Reading) -> bool:
        """Fold the commits since the base into one group of their net changes, when that is cheaper
        than a rebase (see `policy.fold_pays`)."""
        if reading.base is None or reading.head is None or reading.head == self._folded or self._switching.busy():
            return False  # folded already and still too large, or a rebase is under way
        net, rebase = await asyncio.to_thread(self.reader.costs, snapshot, reading.head)
        if self._folded == reading.head:
            return True  # another request folded meanwhile
        if not fold_pays(net, rebase, self.budget(snapshot)) or self.snapshot is not snapshot:
            return False
        self._folded = reading.head
        self._metrics.folds.inc()
        await self._save(snapshot)
        log.info("folded the diff's commits up to %s into their net changes: %d bytes", short(reading.head), net)
        return True

    async def _save(self, snapshot: Snapshot) -> None:
        epoch = attrs.evolve(snapshot.epoch, folded=self._folded)
        await asyncio.to_thread(save_epoch, self._state_file, self.reader.path, epoch)

    def _switch_in_background(self, head: str | None) -> None:
        if not self._switching.busy():
            self._switching.start(("switch", head), lambda: self._switch(head, prewarm=True))

    async def _switch_to(self, head: str | None, prewarm: bool) -> Rebase:
        return await self._switching.join(("switch", head), lambda: self._switch(head, prewarm))

    async def _switch(self, head: str | None, prewarm: bool) -> Rebase:
        started = time.monotonic()
        previous = self.snapshot
        if previous is not None and previous.commit == head:
            return Rebase(head, head, None, 0.0)  # a switch that finished while this one was asked for
        snapshot = await self._recall(head, previous, near=prewarm)
        if snapshot is None:
            snapshot = await self._build(head, previous.epoch if previous else None, previous)
        usage = await self._warm_up(snapshot) if prewarm else None
        self.last_rebase = Rebase(
            previous.commit if previous else None, snapshot.commit, usage, time.monotonic() - started
        )
        if previous is not None:
            self.remembered.keep(previous)
        self._serve(snapshot)
        self._folded = None
        self._metrics.rebases.inc()
        await self._save(snapshot)
        log.info(
            "rebased the snapshot from %s to %s in %.2fs%s",
            short(self.last_rebase.previous),
            short(snapshot.commit),
            self.last_rebase.seconds,
            f"; warm-up cached {usage.cached_tokens} of {usage.prompt_tokens} tokens" if usage else "",
        )
        return self.last_rebase

    def _serve(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._metrics.snapshot_bytes = snapshot.text_bytes

    async def _warm_up(self, snapshot: Snapshot) -> Usage | None:
        """Have the upstream cache the new epoch before it is served; a failure is logged, not fatal."""
        if self.warmer is None:
            return None
        diff = await asyncio.to_thread(self.reader.diff, snapshot)
        try:
            usage = await self.warmer(snapshot, diff)
        except ProxyError as error:
            self._metrics.warmups.inc((("outcome", "failed"),))
            log.warning("warm-up of snapshot %s failed, switching anyway: %s", short(snapshot.commit), error.message)
            return None
        self._metrics.warmups.inc((("outcome", "ok"),))
        return usage

    async def _recall(self, head: str | None, current: Snapshot | None, near: bool) -> Snapshot | None:
        """A remembered epoch to switch to instead of building: HEAD's own, or (`near`) the one
        whose diff to HEAD is smallest within the budget."""
        if (own := self.remembered.take(head)) is not None:
            return own
        if not near or head is None or current is None or not self.remembered.bases:
            return None
        sizes = await asyncio.to_thread(self.reader.net_bytes, self.remembered.snapshots, head)
        chosen = closest_remembered(sizes, self.budget(current))
        if chosen is None:
            return None
        log.info("HEAD %s is close to the remembered snapshot %s: switching back to it", short(head), short(chosen))
        return self.remembered.take(chosen)

    async def _build(self, commit: str | None, previous: Epoch | None, reuse: Snapshot | None = None) -> Snapshot:
        self._metrics.snapshot_builds.inc()
        started = time.monotonic()
        try:
            snapshot = await asyncio.to_thread(self.reader.build, commit, previous, reuse)
        except ProxyError as error:
            self.last_error = error.message
            log.error("snapshot build for %s failed: %s", short(commit), error.message)
            raise
        self.last_error = None
        self._metrics.build_seconds.observe(time.monotonic() - started)
        if snapshot.findings:
            self._report(f"snapshot {short(commit)}", snapshot.findings)
        self._note_unreadable((item.path, item.detail) for item in snapshot.left_out if item.reason == UNREADABLE)
        log.info(
            "snapshot %s built in %.2fs: %d files inlined, %d bytes, %d left out",
            short(commit),
            time.monotonic() - started,
            snapshot.files,
            snapshot.text_bytes,
            len(snapshot.left_out),
        )
        return snapshot

    def _report_once(self, findings: tuple[Finding, ...]) -> None:
        """A diff's secrets are logged when they change, not on every request."""
        if findings and findings != self._reported:
            self._reported = findings
            self._report("the working diff", findings)

    def _note_unreadable(self, entries: Iterable[Unreadable]) -> None:
        """An entry that cannot be read is logged and counted once, not on every request that shows
        its stub (one forgotten by the bounded memo is noted again)."""
        for entry in entries:
            if entry in self._unreadable:
                continue
            if len(self._unreadable) >= UNREADABLE_MEMO:
                del self._unreadable[next(iter(self._unreadable))]
            self._unreadable[entry] = None
            path, why = entry
            self._metrics.unreadable.inc((("reason", why),))
            log.warning("%s cannot be read (%s): the model is shown a stub in its place", spell(path), why)

    def _report(self, where: str, findings: tuple[Finding, ...]) -> None:
        """Where secrets were found (path, line, rule), never what they were."""
        done = "redacted" if self.reader.rules.secrets == "redact" else "their files left out"
        places = ", ".join(f"{finding.path}:{finding.line} ({finding.rule})" for finding in findings)
        log.warning("%s: %d secrets found, %s: %s", where, len(findings), done, places)
