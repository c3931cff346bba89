"""The snapshot: the committed tree of one base commit, rendered as one deterministic text.

Layout (the contract the model reads, and the bytes the upstream caches):

    # Repository snapshot
    <a fixed explanation: nothing in it changes between commits>

    === file: PATH [N lines] ===                   (", no newline at end", ", executable")
    <exactly N lines: the text of the file>
    === symlink: PATH [1 lines, no newline at end] ===
    TARGET
    ...
    === not included [M entries] ===
    binary: PATH (N bytes)
    too large: PATH (N bytes)
    over the snapshot cap: PATH (N bytes)
    over the window: PATH (N bytes)      the upstream's window has no room for it
    submodule: PATH (at COMMIT)
    secret by its name: PATH (not read)
    holds a secret: PATH (N found)       only with [security] secrets = exclude-file
    unreadable: PATH (object missing)    or "object unreadable": the object database cannot give it
    === end of snapshot: commit COMMIT ===

Everything that differs between epochs sits as late as it can: files in the stable order of
`order.py`, the list of files left out after them, the commit id on the last line. Nothing depends
on time, host, absolute paths or dict order, so the same commit, order and rules give the same bytes
on any machine. A header counts its file's lines, so no text inside a file can end it early or open
a phantom file (the README gives the grammar). Excluded paths are left out silently. The cap
(`max_snapshot_bytes`) is first-fit in snapshot order: a file is inlined when its section still
fits, otherwise it is listed as over the cap (and its diffs stay stubs: see `ContentRules.over_cap`).
When the repository does not fit its part of the upstream's window, a `Fit` (see
`context/fitting.py`) names the files left out for it, listed as over the window, treated the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import attrs
import pygit2

from ..encoding import encode_text
from ..errors import RepositoryError
from .content import spell
from .epoch import Epoch
from .order import HISTORY_WINDOW, carry_order, changed_paths, last_changes, least_recent_first
from .repository import ContentRules, opened, repository_key
from .secrets import Finding
from .sections import EXCLUDED, Section, SectionKey, render_entries
from .workers import InlineExecutor, Workers

#: The snapshot's message is kept as chunks of about this size: never one huge bytes object to
#: allocate and copy in one call (the GIL is held meanwhile), and few enough writes per request.
CHUNK_BYTES = 1 << 20

#: Parts a first epoch's history walk is split into, so that both worker processes share it.
WALK_PARTS = 2

#: Render batches per build: small enough to share the work evenly between processes, few enough to be cheap.
BATCHES = 16

HEADER = """\
# Repository snapshot

Repository {key}. This message holds the committed source of the repository at one commit, named on its last line: \
the text of every file, one after another, the least often changed first. Each file starts with a \
line of its own, "=== file: PATH [N lines] ===", followed by exactly those N lines of its text; \
"no newline at end" says its last line has no line break in the file, "executable" that it is. A \
symbolic link is "=== symlink: PATH [1 lines, no newline at end] ===" followed by its target. \
Files whose contents are not included are listed near the end under "=== not included [M entries] ===". The \
next message is the working diff from that commit to the working tree as it is now: where the two \
differ, the diff is the current state.

"""

#: The reason of a file whose section did not fit under `max_snapshot_bytes`.
OVER_CAP = "over the snapshot cap"
#: The reason of a file left out so that the snapshot fits its part of the upstream's window.
OVER_WINDOW = "over the window"

UNBORN = """\
# Repository snapshot

The repository has no commits yet, so there is no committed source to show. All of its files are \
in the working diff that follows.
"""


@attrs.frozen
class LeftOut:
    path: str
    reason: str  # "binary", "too large", "over the snapshot cap", "over the window", "submodule", "secret by its name", "holds a secret", "unreadable"
    detail: str

    def render(self) -> str:
        return f"{self.reason}: {spell(self.path)} ({self.detail})"


#: Called once a build has rendered every section, with the sections that could be inlined (in
#: snapshot order, under the cap) and the header's text: the paths to leave out over the window.
Fit = Callable[[list[Section], str], frozenset[str]]


#: What a chunk was joined from, piece by piece: a section's key, or the bytes of a piece that has none.
Layout = tuple[SectionKey | bytes, ...]


@attrs.frozen
class Rendered:
    """The sections a snapshot was assembled from, by entry, under one set of rules: what a rebase
    reuses. Inlined sections are views into the snapshot's own chunks, so they cost no memory; a
    chunk joined from the same pieces as one of these is taken as it is (see `_chunks`)."""

    rules: ContentRules
    sections: dict[SectionKey, Section] = attrs.field(repr=False)
    chunks: tuple[tuple[bytes, Layout], ...] = attrs.field(default=(), repr=False)

    def usable(self, rules: ContentRules) -> dict[SectionKey, Section]:
        return self.sections if rules == self.rules else {}


@attrs.frozen
class Snapshot:
    commit: str | None
    #: (path, bytes) of every file whose text is in the snapshot, in snapshot order.
    inlined: tuple[tuple[str, int], ...] = attrs.field(repr=False)
    text_bytes: int
    #: Files listed without their text (binary, too large, over the cap, submodules).
    left_out: tuple[LeftOut, ...]
    #: Paths the exclude patterns kept out, not mentioned in the text at all.
    excluded: tuple[str, ...] = attrs.field(repr=False)
    #: Secrets found (and redacted, or their files left out): path, line, rule; never the value.
    findings: tuple[Finding, ...] = attrs.field(repr=False)
    #: Every path of the base tree, in snapshot order: what the next epoch's order starts from.
    order: tuple[str, ...] = attrs.field(repr=False)
    #: The text, JSON-encoded once (without quotes), as chunks spliced into every request's body;
    #: each API puts its own envelope around it.
    json_text: tuple[bytes, ...] = attrs.field(repr=False)
    rendered: Rendered | None = attrs.field(default=None, repr=False, eq=False)
    #: The repository's name in the header (see `repository_key`); None before the first commit.
    key: str | None = attrs.field(default=None, repr=False)
    #: Its tokens as the upstream's tokenizer counts them, once fitted to a window (None: not
    #: fitted, or the upstream cannot count and its tokens were estimated)...
    tokens: int | None = None
    #: ...and the tokens it was fitted to (the snapshot's part of that window; None: not fitted)...
    budget: int | None = None
    #: ...and the diff's part of that window.
    diff_budget: int | None = None

    @property
    def files(self) -> int:
        return len(self.inlined)

    @property
    def over_cap(self) -> frozenset[str]:
        """Files left out for their size (the cap or the window): their diffs stay stubs."""
        return frozenset(item.path for item in self.left_out if item.reason in (OVER_CAP, OVER_WINDOW))

    @property
    def over_window(self) -> frozenset[str]:
        return frozenset(item.path for item in self.left_out if item.reason == OVER_WINDOW)

    @property
    def epoch(self) -> Epoch:
        chosen = tuple(sorted(self.over_window)) if self.budget is not None else None
        return Epoch(self.commit, self.order, key=self.key, over_window=chosen)

    def encoded(self) -> bytes:
        """The encoded text in one piece: for inspection and tests, never per request."""
        return b"".join(self.json_text)

    def text(self) -> str:
        """The text itself, decoded from its encoding: for inspection and tests, never per request."""
        return str(json.loads(b'"' + self.encoded() + b'"'))


def build_snapshot(
    path: Path,
    commit: str | None,
    rules: ContentRules,
    max_snapshot_bytes: int,
    previous: Epoch | None,
    *,
    workers: Workers | None = None,
    reuse: Snapshot | None = None,
    fit: Fit | None = None,
) -> Snapshot:
    """Render `commit` (None: no commits yet), ordered from the `previous` epoch, taking every
    section `reuse` has for an unchanged entry, leaving out what `fit` says. Blocking; the
    rendering runs on `workers`."""
    if commit is None:
        return Snapshot(None, (), len(UNBORN.encode("utf-8")), (), (), (), (), (encode_text(UNBORN),))
    try:
        with opened(path) as repo:
            target = repo[commit].peel(pygit2.Commit)
            entries = [
                (raw.decode("utf-8", "surrogateescape"), mode, str(oid)) for raw, mode, oid in _walk(target.tree, b"")
            ]
            base = _carried_base(repo, previous)
            executor = workers.executor(len(entries)) if workers is not None else InlineExecutor()
            try:
                sections, order, key = _render(path, commit, rules, previous, base, entries, reuse, executor)
            except BrokenProcessPool:  # a worker died (killed, out of memory): this build goes on here
                assert workers is not None
                workers.discard(executor)
                sections, order, key = _render(path, commit, rules, previous, base, entries, reuse, InlineExecutor())
    except (pygit2.GitError, KeyError, ValueError) as error:
        raise RepositoryError(f"cannot read commit {commit} in {path}: {error}") from None
    by_path = {entry[0]: entry for entry in entries}
    ordered = [by_path[item] for item in order]
    over = fit(_inlinable(ordered, sections, max_snapshot_bytes), HEADER.format(key=key)) if fit else frozenset()
    earlier = reuse.rendered.chunks if reuse is not None and reuse.rendered and reuse.rendered.rules == rules else ()
    return _assemble(commit, key, ordered, sections, max_snapshot_bytes, rules, earlier, over)


def _inlinable(entries: list[SectionKey], sections: dict[SectionKey, Section], cap: int) -> list[Section]:
    """The sections the cap lets in, in snapshot order (as `_assemble` decides)."""
    inlined = []
    for entry in entries:
        item = sections[entry]
        if item.reason is None and item.cost <= cap:
            cap -= item.cost
            inlined.append(item)
    return inlined


def history(path: Path, commit: str, since: str | None, start: int, stop: int) -> dict[str, int]:
    """How many first-parent commits back from `commit` each path last changed, for the commits
    `start` to `stop` back (stopping at `since`): one part of a build's history walk."""
    with opened(path) as repo:
        target = repo[commit].peel(pygit2.Commit)
        return last_changes(repo, target, pygit2.Oid(hex=since) if since else None, stop, start)


def changes_and_key(
    path: Path, commit: str, base: str | None, known: tuple[str, str] | None
) -> tuple[set[str] | None, str]:
    """The paths changed since the previous epoch's `base` (None without one) and the repository's name."""
    with opened(path) as repo:
        target = repo[commit].peel(pygit2.Commit)
        changed = changed_paths(repo[base].peel(pygit2.Tree), target.tree) if base is not None else None
        return changed, repository_key(repo, target, known)


def _render(
    path: Path,
    commit: str,
    rules: ContentRules,
    previous: Epoch | None,
    base: str | None,
    entries: list[SectionKey],
    reuse: Snapshot | None,
    executor: Executor,
) -> tuple[dict[SectionKey, Section], list[str], str]:
    """Every entry's section (those `reuse` has as they are), the order and the name, side by side.

    The history walk (up to HISTORY_WINDOW tree diffs on a first epoch) is split into parts that
    run beside the rendering, and so is the walk to the first commit that names the repository.
    """
    named = previous.named if previous is not None else None
    step = HISTORY_WINDOW if base is not None else -(-HISTORY_WINDOW // WALK_PARTS)
    walks = [
        executor.submit(history, path, commit, base, start, min(start + step, HISTORY_WINDOW))
        for start in range(0, HISTORY_WINDOW, step)
    ]
    changes = executor.submit(changes_and_key, path, commit, base, named)
    known = reuse.rendered.usable(rules) if reuse is not None and reuse.rendered is not None else {}
    todo = [entry for entry in entries if entry not in known]
    size = max(1, -(-len(todo) // BATCHES))
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    futures = [executor.submit(render_entries, path, batch, rules) for batch in batches]
    sections = {entry: known[entry] for entry in entries if entry in known}
    for batch, future in zip(batches, futures, strict=True):
        sections.update(zip(batch, future.result(), strict=True))
    ages: dict[str, int] = {}
    for walk in walks:  # newest part first: a path's first sighting is its last change
        for changed_path, age in walk.result().items():
            ages.setdefault(changed_path, age)
    changed, key = changes.result()
    paths = [entry[0] for entry in entries]
    if previous is not None and changed is not None:
        return sections, carry_order(previous.order, changed, paths, ages), key
    return sections, least_recent_first(paths, ages), key


def _carried_base(repo: pygit2.Repository, previous: Epoch | None) -> str | None:
    """The previous epoch's base, when its order can be carried: it has one, and the base is here."""
    if previous is None or previous.base is None or not previous.order or repo.get(previous.base) is None:
        return None
    return previous.base


def _assemble(
    commit: str,
    key: str,
    entries: list[SectionKey],
    sections: dict[SectionKey, Section],
    max_snapshot_bytes: int,
    rules: ContentRules,
    earlier: tuple[tuple[bytes, Layout], ...],
    over_window: frozenset[str] = frozenset(),
) -> Snapshot:
    """The sections in snapshot order, the first that fit under the cap inlined, the rest listed,
    and those `over_window` names listed too."""
    header = HEADER.format(key=key)
    left_out: list[LeftOut] = []
    excluded: list[str] = []
    findings: list[Finding] = []
    inlined: list[tuple[str, int]] = []
    pieces: list[tuple[SectionKey | None, bytes | memoryview]] = [(None, encode_text(header))]
    text_bytes = len(header.encode("utf-8"))
    kept: dict[SectionKey, Section] = {}
    budget = max_snapshot_bytes
    for entry in entries:
        item = sections[entry]
        if item.reason == EXCLUDED:
            excluded.append(item.path)
        elif item.reason is not None:
            left_out.append(LeftOut(item.path, item.reason, item.detail))
        elif item.cost > budget:
            left_out.append(LeftOut(item.path, OVER_CAP, f"{item.size} bytes"))
            findings += item.findings
            continue  # not kept: its text would be held outside the chunks
        elif item.path in over_window:  # kept, text and all: a fit may take it back at any rebase
            left_out.append(LeftOut(item.path, OVER_WINDOW, f"{item.size} bytes"))
            budget -= item.cost  # the cap decides as if it were inlined
        else:
            budget -= item.cost
            text_bytes += item.cost
            inlined.append((item.path, item.size))
            pieces.append((entry, item.encoded))
        findings += item.findings
        kept[entry] = item
    text = _tail(left_out, commit)
    text_bytes += len(text.encode("utf-8"))
    pieces.append((None, encode_text(text)))
    chunks, views = _chunks(pieces, earlier)
    rendered = Rendered(rules, {entry: _viewed(item, views.get(entry)) for entry, item in kept.items()}, chunks)
    return Snapshot(
        commit,
        tuple(inlined),
        text_bytes,
        tuple(left_out),
        tuple(excluded),
        tuple(findings),
        tuple(entry[0] for entry in entries),
        tuple(chunk for chunk, _ in chunks),
        rendered,
        key,
    )


def _viewed(item: Section, view: memoryview | None) -> Section:
    """A kept section, its text a view into the chunk that holds it (if one does)."""
    return attrs.evolve(item, encoded=view) if view is not None else item


def _tail(left_out: list[LeftOut], commit: str) -> str:
    """The end of the snapshot: the files not included, and the commit."""
    listed = [f"=== not included [{len(left_out)} entries] ===\n"] if left_out else []
    return "".join(
        [*listed, *(item.render() + "\n" for item in left_out), f"=== end of snapshot: commit {commit} ===\n"]
    )


def _chunks(
    pieces: list[tuple[SectionKey | None, bytes | memoryview]], earlier: tuple[tuple[bytes, Layout], ...]
) -> tuple[tuple[tuple[bytes, Layout], ...], dict[SectionKey, memoryview]]:
    """The pieces joined into chunks of about CHUNK_BYTES (each with its layout), and a view of each
    keyed piece in a chunk joined here. A chunk of `earlier` (the previous snapshot's, under the same
    rules) with the same layout at the same place has the same bytes, so it is taken instead of
    joined again, and its pieces are the previous snapshot's sections, views into it already: a
    rebase keeps the order of every unchanged file, and copies only from the first change on."""
    chunks: list[tuple[bytes, Layout]] = []
    views: dict[SectionKey, memoryview] = {}
    group: list[tuple[SectionKey | None, bytes | memoryview]] = []
    size = 0
    for number, (entry, piece) in enumerate(pieces):
        group.append((entry, piece))
        size += len(piece)
        if size >= CHUNK_BYTES or number == len(pieces) - 1:
            layout = tuple(key if key is not None else bytes(part) for key, part in group)
            if len(chunks) < len(earlier) and earlier[len(chunks)][1] == layout:
                chunks.append(earlier[len(chunks)])  # its sections' views are into it already
            else:
                chunk = b"".join(piece for _, piece in group)
                whole, start = memoryview(chunk), 0
                for key, part in group:
                    if key is not None:
                        views[key] = whole[start : start + len(part)]
                    start += len(part)
                chunks.append((chunk, layout))
            group, size = [], 0
    return tuple(chunks), views


def _walk(tree: pygit2.Tree, prefix: bytes) -> Iterator[tuple[bytes, int, pygit2.Oid]]:
    """(raw path, file mode, object id) for every blob, link and submodule below `tree`. A subtree's
    entry is the tree itself (read when iterated), found by its type: cheaper than its mode's enum."""
    for entry in tree:
        raw_path = prefix + (entry.raw_name or (entry.name or "").encode())
        if isinstance(entry, pygit2.Tree):
            yield from _walk(entry, raw_path + b"/")
        else:
            yield raw_path, entry.filemode, entry.id
