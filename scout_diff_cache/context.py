"""The repository context of a request: the current epoch's snapshot and a fresh working diff.

An epoch is a base commit with its snapshot. It outlives commits: after a commit the same snapshot
is served and the working diff (base → working tree) carries what was committed, so the upstream's
cache of the snapshot stays valid. The epoch moves to HEAD (a rebase) when keeping it stops paying,
per `[context] rebase`:

- `auto`: when HEAD has moved and the diff outgrows `rebase_diff_share` of the snapshot (and
  `rebase_min_diff_bytes`). If it makes the upstream re-read less (see `_fold`), the commits'
  groups are *folded* into one group of their net changes and the snapshot stays. Otherwise the
  new snapshot is built and warmed upstream in the background while the old epoch keeps serving;
  then the switch is atomic.
- `every-commit`: on every new HEAD, before answering (the original design, for comparison).
- `manual`: only when asked (`POST /admin/rebase`, `scout-diff-cache rebase`).

Any base gives a faithful diff, an ancestor of HEAD or not (another branch, a rebase, an amend):
the diff shows the net change from it (see `lineage.py`), and the budget decides as above. Only a
base that is gone from the repository is replaced at once. The last `remembered_epochs` snapshots
stay in memory: a rebase to one of their commits, or to one whose diff to HEAD fits the budget (a
branch switched back to), reuses it byte for byte instead of building. Blocking libgit2 work runs
in threads; callers that ask while a computation is queued share it, and a computation never
started before its caller asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

import attrs
import pygit2

from .accounting import Usage
from .config import Config, ContextConfig
from .diff import Group, WorkingDiff, committed_groups, working_diff
from .epoch import Epoch, load_epoch, save_epoch, state_file
from .errors import ProxyError, RepositoryError
from .lineage import Lineage, trace
from .metrics import Metrics
from .order import changed_paths
from .policy import budget, closest_remembered, fold_pays, outgrown
from .repository import ContentRules, head_commit, open_repository, short
from .secrets import Finding
from .snapshot import Snapshot, build_snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

WarmUp = Callable[[Snapshot, WorkingDiff], Awaitable["Usage | None"]]


class Coalesced(Generic[T]):
    """Runs `fn` in a thread for callers; those who ask while a run is queued share it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._running: asyncio.Task[T] | None = None
        self._queued: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._queued is None:
            self._queued = asyncio.create_task(self._after(self._running))
            self._queued.add_done_callback(_consume)
        return await asyncio.shield(self._queued)

    async def _after(self, previous: asyncio.Task[T] | None) -> T:
        if previous is not None:
            await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        return await asyncio.to_thread(self._fn)


def _report(where: str, findings: tuple[Finding, ...], mode: str) -> None:
    """Where secrets were found (path, line, rule), never what they were."""
    done = "redacted" if mode == "redact" else "their files left out"
    places = ", ".join(f"{finding.path}:{finding.line} ({finding.rule})" for finding in findings)
    log.warning("%s: %d secrets found, %s: %s", where, len(findings), done, places)


def _consume(task: asyncio.Future[object]) -> None:
    """Mark a failure as seen: the callers who awaited it have already had it raised."""
    if not task.cancelled():
        task.exception()


@attrs.frozen
class Context:
    snapshot: Snapshot
    diff: WorkingDiff


@attrs.frozen
class _State:
    """The repository as one thread read it, against the base it was given."""

    base: str | None
    head: str | None
    base_valid: bool
    diff: WorkingDiff | None
    #: Where the diff's net group ends (see `lineage.py`); None: no net group.
    anchor: str | None = None


@attrs.frozen
class Rebase:
    previous: str | None
    base: str | None
    warmup: Usage | None
    seconds: float


class RepositoryContext:
    def __init__(self, config: Config, metrics: Metrics, warm: WarmUp | None = None) -> None:
        self._repository = config.repository
        self._metrics = metrics
        self._policy = config.context
        self._rules = ContentRules.from_config(config)
        self._state_file = state_file(config.context.state_dir, config.repository.path)
        self.warm = warm
        self._read = Coalesced(self._read_state)
        self._lineage: Lineage | None = None  # the commits the last diff showed
        self._rendered: dict[str, Group] = {}
        self._remembered: dict[str, Snapshot] = {}  # earlier epochs, oldest first
        self._shown: WorkingDiff | None = None  # the last diff read: a commit keeps its file order
        self._folded: str | None = None
        self._switching: dict[str | None, asyncio.Task[Rebase]] = {}
        self._starting: asyncio.Task[Snapshot] | None = None
        self.snapshot: Snapshot | None = None
        self.last_request = 0.0
        self.last_diff_bytes = 0
        self._reported: tuple[Finding, ...] = ()
        self.builds_started = 0
        self.rebases = 0
        self.folds = 0
        self.last_rebase: Rebase | None = None
        self.last_error: str | None = None

    def configure(self, policy: ContextConfig) -> None:
        """Take new context settings (a reload); the next request follows them."""
        self._policy = policy
        self._forget_beyond(policy.remembered_epochs)

    @property
    def remembered(self) -> tuple[str, ...]:
        """The bases of the epochs kept for a switch back, oldest first."""
        return tuple(self._remembered)

    @property
    def state(self) -> str:
        if self._switching or self._starting is not None and not self._starting.done():
            return "building"
        if self.last_error is not None:
            return "failed"
        return "ready" if self.snapshot is not None else "not built"

    async def current(self) -> Context:
        """The snapshot and a diff read after this call began, consistent with each other."""
        self.last_request = time.monotonic()
        failure: RepositoryError | None = None
        for attempt in range(4):
            await self.start()
            try:
                state = await self._read()
            except RepositoryError as error:  # often a file rewritten while libgit2 read it: retry
                failure = error
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            snapshot = self.snapshot
            if snapshot is None or state.base != snapshot.commit:
                continue  # the epoch switched while the diff was read against the old one
            if not state.base_valid or (self._policy.rebase == "every-commit" and state.head != state.base):
                await self._switch_to(state.head, warm=False)
                continue
            assert state.diff is not None
            if state.anchor != self._folded:  # the diff's net group moved: a restart must render the same
                self._folded = state.anchor
                await self._save(snapshot)
            if self._policy.rebase == "auto" and self._outgrown(snapshot, state):
                if await self._fold(snapshot, state):
                    continue  # read again, with one group for the commits
                self._switch_in_background(state.head)
            self.last_diff_bytes = state.diff.text_bytes
            if state.diff.findings and state.diff.findings != self._reported:
                self._reported = state.diff.findings
                _report("the working diff", state.diff.findings, self._rules.secrets)
            return Context(snapshot, state.diff)
        if failure is not None:
            raise failure
        raise RepositoryError("the repository kept changing while its state was read; try again")

    async def start(self) -> Snapshot:
        """The first epoch: the saved one if it is still valid (same bytes as before a restart)."""
        if self._starting is None or (self._starting.done() and self.snapshot is None):
            self._starting = asyncio.create_task(self._start())
            self._starting.add_done_callback(_consume)
        return await asyncio.shield(self._starting)

    async def rebase(self) -> Rebase:
        """A manual rebase to HEAD, warmed upstream before the switch."""
        state = await self._read()
        if self.snapshot is not None and state.head == self.snapshot.commit:
            return Rebase(state.head, state.head, None, 0.0)
        return await self._switch_to(state.head, warm=True)

    async def warm_now(self) -> Usage | None:
        """Send the current prefix upstream once (keep-alive pings); None without a warmer."""
        snapshot = self.snapshot or await self.start()
        if self.warm is None:
            return None
        return await self.warm(snapshot, await asyncio.to_thread(self._diff_against, snapshot))

    async def preview(self) -> Context:
        """What a server started now would send, without saving or switching anything."""
        base, saved = await self._first_base()
        snapshot = await asyncio.to_thread(
            build_snapshot, self._repository.path, base, self._rules, self._repository.max_snapshot_bytes, saved
        )
        return Context(snapshot, await asyncio.to_thread(self._diff_against, snapshot))

    async def _first_base(self) -> tuple[str | None, Epoch | None]:
        """The saved base if still valid (not with every-commit), else HEAD; and the saved epoch."""
        saved = await asyncio.to_thread(load_epoch, self._state_file, self._repository.path)
        head = await asyncio.to_thread(self._head)
        if saved is not None and self._policy.rebase != "every-commit" and await asyncio.to_thread(self._valid, saved.base):
            self._folded = saved.folded
            return saved.base, saved
        return head, saved

    async def _start(self) -> Snapshot:
        base, saved = await self._first_base()
        snapshot = await self._build(base, saved)
        if self.snapshot is None:
            self.snapshot = snapshot
        await self._save(snapshot)
        return self.snapshot

    def _outgrown(self, snapshot: Snapshot, state: _State) -> bool:
        assert state.diff is not None
        return outgrown(state.diff.text_bytes, state.head != state.base, self._budget(snapshot))

    def _budget(self, snapshot: Snapshot) -> float:
        return budget(snapshot.text_bytes, self._policy.rebase_diff_share, self._policy.rebase_min_diff_bytes)

    async def _fold(self, snapshot: Snapshot, state: _State) -> bool:
        """Fold the commits since the base into one group of their net changes, when that is cheaper
        than a rebase (see `policy.fold_pays`)."""
        if state.base is None or state.head == self._folded or self._switching:
            return False  # folded already and still too large, or a rebase is under way
        net, rebase = await asyncio.to_thread(self._costs, snapshot, state.base, state.head)
        if self._folded == state.head:
            return True  # another request folded meanwhile
        if not fold_pays(net, rebase, self._budget(snapshot)) or self.snapshot is not snapshot:
            return False
        self._folded = state.head
        self.folds += 1
        await self._save(snapshot)
        log.info("folded the diff's commits up to %s into their net changes: %d bytes", short(state.head), net)
        return True

    async def _save(self, snapshot: Snapshot) -> None:
        epoch = attrs.evolve(snapshot.epoch, folded=self._folded)
        await asyncio.to_thread(save_epoch, self._state_file, self._repository.path, epoch)

    def _switch_in_background(self, head: str | None) -> None:
        if not self._switching:
            asyncio.ensure_future(self._switch_to(head, warm=True)).add_done_callback(_consume)

    async def _switch_to(self, head: str | None, warm: bool) -> Rebase:
        task = self._switching.get(head)
        if task is None:
            task = asyncio.create_task(self._switch(head, warm))
            self._switching[head] = task
            task.add_done_callback(lambda _: self._switching.pop(head, None))
            task.add_done_callback(_consume)
        return await asyncio.shield(task)

    async def _switch(self, head: str | None, warm: bool) -> Rebase:
        started = time.monotonic()
        previous = self.snapshot
        if previous is not None and previous.commit == head:
            return Rebase(head, head, None, 0.0)  # a switch that finished while this one was asked for
        snapshot = await self._recall(head, previous, near=warm)
        if snapshot is None:
            snapshot = await self._build(head, previous.epoch if previous else None)
        usage = None
        if warm and self.warm is not None:
            diff = await asyncio.to_thread(self._diff_against, snapshot)
            try:
                usage = await self.warm(snapshot, diff)
            except ProxyError as error:
                self._metrics.warmups.inc((("outcome", "failed"),))
                log.warning("warm-up of snapshot %s failed, switching anyway: %s", short(head), error.message)
            else:
                self._metrics.warmups.inc((("outcome", "ok"),))
        self.last_rebase = Rebase(
            previous.commit if previous else None, snapshot.commit, usage, time.monotonic() - started
        )
        if previous is not None and previous.commit is not None:
            self._remembered[previous.commit] = previous
            self._forget_beyond(self._policy.remembered_epochs)
        self.snapshot = snapshot
        self._folded = None
        self._lineage = None
        self._rendered.clear()  # the groups of commits the new base already holds
        self.rebases += 1
        await self._save(snapshot)
        log.info(
            "rebased the snapshot from %s to %s in %.2fs%s",
            short(self.last_rebase.previous), short(snapshot.commit), self.last_rebase.seconds,
            f"; warm-up cached {usage.cached_tokens} of {usage.prompt_tokens} tokens" if usage else "",
        )
        return self.last_rebase

    async def _recall(self, head: str | None, current: Snapshot | None, near: bool) -> Snapshot | None:
        """A remembered epoch to switch to instead of building: HEAD's own, or (`near`) the one
        whose diff to HEAD is smallest within the budget."""
        if head in self._remembered:
            return self._remembered.pop(head)
        if not near or head is None or current is None or not self._remembered:
            return None
        sizes = await asyncio.to_thread(self._net_bytes, tuple(self._remembered.values()), head)
        chosen = closest_remembered(sizes, self._budget(current))
        if chosen is None:
            return None
        log.info("HEAD %s is close to the remembered snapshot %s: switching back to it", short(head), short(chosen))
        return self._remembered.pop(chosen)

    def _forget_beyond(self, capacity: int) -> None:
        while len(self._remembered) > capacity:
            del self._remembered[next(iter(self._remembered))]

    async def _build(self, commit: str | None, previous: Epoch | None) -> Snapshot:
        self.builds_started += 1
        started = time.monotonic()
        config = self._repository
        try:
            snapshot = await asyncio.to_thread(
                build_snapshot, config.path, commit, self._rules, config.max_snapshot_bytes, previous
            )
        except ProxyError as error:
            self.last_error = error.message
            log.error("snapshot build for %s failed: %s", short(commit), error.message)
            raise
        self.last_error = None
        self._metrics.build_seconds.observe(time.monotonic() - started)
        if snapshot.findings:
            _report(f"snapshot {short(commit)}", snapshot.findings, self._rules.secrets)
        log.info(
            "snapshot %s built in %.2fs: %d files inlined, %d bytes, %d left out",
            short(commit), time.monotonic() - started, snapshot.files, snapshot.text_bytes, len(snapshot.left_out),
        )
        return snapshot

    # The functions below run in threads, each with its own repository handle.

    def _head(self) -> str | None:
        commit = head_commit(open_repository(self._repository.path))
        return str(commit.id) if commit is not None else None

    def _valid(self, base_id: str | None) -> bool:
        repo = open_repository(self._repository.path)
        return _commits(repo, base_id, head_commit(repo)) is not None

    def _read_state(self) -> _State:
        snapshot = self.snapshot
        if snapshot is None:
            return _State(None, None, False, None)
        return self._read_with(open_repository(self._repository.path), snapshot)

    def _diff_against(self, snapshot: Snapshot) -> WorkingDiff:
        state = self._read_with(open_repository(self._repository.path), snapshot)
        if state.diff is None:
            raise RepositoryError(f"commit {snapshot.commit} is no longer in the repository")
        return state.diff

    def _rules_for(self, snapshot: Snapshot) -> ContentRules:
        """The diff's rules for an epoch: what its snapshot left out stays a stub."""
        return attrs.evolve(self._rules, left_out=snapshot.left_out_paths)

    def _read_with(self, repo: pygit2.Repository, snapshot: Snapshot) -> _State:
        head = head_commit(repo)
        head_id = str(head.id) if head is not None else None
        commits = _commits(repo, snapshot.commit, head)
        if commits is None:
            return _State(snapshot.commit, head_id, False, None)
        rules = self._rules_for(snapshot)
        groups: list[Group] = []
        anchor = None
        base, head = commits
        if base is not None and head is not None:
            current = snapshot is self.snapshot
            lineage = trace(repo, base, head, self._lineage if current else None, self._folded if current else None)
            if current:
                self._lineage = lineage  # shared by threads: replaced whole
            groups = committed_groups(repo, lineage, rules, self._rendered, self._shown)
            anchor = lineage.anchor if lineage.anchor != lineage.base else None
        diff = working_diff(repo, base, head, rules, groups)
        self._shown = diff  # shared by threads: replaced whole
        return _State(snapshot.commit, head_id, True, diff, anchor)

    def _costs(self, snapshot: Snapshot, base_id: str, head_id: str | None) -> tuple[int, int]:
        """Bytes the upstream re-reads after a fold (the net diff) and after a rebase (the snapshot's tail)."""
        repo = open_repository(self._repository.path)
        base, head = repo[base_id].peel(pygit2.Commit), repo[head_id].peel(pygit2.Commit)
        net = self._net_bytes((snapshot,), head_id)[base_id]
        changed = changed_paths(repo, base.tree, head.tree)
        first = next((n for n, (path, _) in enumerate(snapshot.inlined) if path in changed), len(snapshot.inlined))
        return net, sum(size for _, size in snapshot.inlined[first:])

    def _net_bytes(self, snapshots: tuple[Snapshot, ...], head_id: str) -> dict[str, int]:
        """For each snapshot, the bytes of its net change to HEAD, as the diff would show it."""
        repo = open_repository(self._repository.path)
        head = repo[head_id].peel(pygit2.Commit)
        sizes = {}
        for snapshot in snapshots:
            base = repo.get(snapshot.commit) if snapshot.commit is not None else None
            if isinstance(base, pygit2.Commit):
                lineage = trace(repo, base, head, None, head_id)
                groups = committed_groups(repo, lineage, self._rules_for(snapshot), self._rendered, None)
                sizes[str(base.id)] = sum(len(group.text.encode("utf-8")) for group in groups)
        return sizes


def _commits(
    repo: pygit2.Repository, base_id: str | None, head: pygit2.Commit | None
) -> tuple[pygit2.Commit | None, pygit2.Commit | None] | None:
    """The base and HEAD commits, or None when the base cannot serve: gone from the repository, or
    an unborn base once HEAD has a commit (and the reverse)."""
    base = repo.get(base_id) if base_id is not None else None
    if base_id is not None and not isinstance(base, pygit2.Commit):
        return None
    if (base is None) != (head is None):
        return None
    return base, head
