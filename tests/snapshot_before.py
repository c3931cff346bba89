"""The snapshot renderer as it was before issue #14 (one thread, one joined message), kept verbatim
as the reference the new renderer must match byte for byte (see test_snapshot_bytes.py)."""

# ruff: noqa
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import FileMode

from scout_diff_cache.git.content import entry_side, is_binary, screened_text, section, spell
from scout_diff_cache.git.epoch import Epoch
from scout_diff_cache.errors import RepositoryError
from scout_diff_cache.git.order import carry_order, changed_paths, last_changes, least_recent_first
from scout_diff_cache.apis.assembly import system_message  # the chat envelope the snapshot once carried
from scout_diff_cache.git.repository import ContentRules, open_repository, repository_key
from scout_diff_cache.git.secrets import Finding

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

UNBORN = """\
# Repository snapshot

The repository has no commits yet, so there is no committed source to show. All of its files are \
in the working diff that follows.
"""


@attrs.frozen
class LeftOut:
    path: str
    reason: str  # "binary", "too large", "over the snapshot cap", "submodule", "secret by its name", "holds a secret"
    detail: str

    def render(self) -> str:
        return f"{self.reason}: {spell(self.path)} ({self.detail})"


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
    #: The system message, JSON-encoded once, spliced into every request's body.
    message: bytes = attrs.field(repr=False)

    @property
    def files(self) -> int:
        return len(self.inlined)

    @property
    def left_out_paths(self) -> frozenset[str]:
        return frozenset(item.path for item in self.left_out)

    @property
    def epoch(self) -> Epoch:
        return Epoch(self.commit, self.order)


def build_snapshot(
    path: Path, commit: str | None, rules: ContentRules, max_snapshot_bytes: int, previous: Epoch | None
) -> Snapshot:
    """Render `commit` (None: no commits yet), ordered from the `previous` epoch. Blocking."""
    if commit is None:
        return _finish(None, [UNBORN], [], [], [], [], ())
    repo = open_repository(path)
    try:
        target = repo[commit].peel(pygit2.Commit)
        entries = {
            raw.decode("utf-8", "surrogateescape"): (mode, oid) for raw, mode, oid in _walk(repo, target.tree, b"")
        }
        order = _order(repo, target, previous, entries)
        parts = [HEADER.format(key=repository_key(repo, target))]
        left_out: list[LeftOut] = []
        excluded: list[str] = []
        findings: list[Finding] = []
        inlined: list[tuple[str, int]] = []
        budget = max_snapshot_bytes
        for key in order:
            mode, oid = entries[key]
            path_text = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if rules.exclude.excludes(path_text):
                excluded.append(path_text)
                continue
            if rules.secret_by_name(path_text):
                left_out.append(LeftOut(path_text, "secret by its name", "not read"))
                continue
            side = entry_side(repo, mode, oid, rules)
            assert side is not None  # _walk yields no trees
            if side.kind == "submodule":
                left_out.append(LeftOut(path_text, "submodule", f"at {oid}"))
                continue
            if side.data is None:
                left_out.append(LeftOut(path_text, "too large", f"{side.size} bytes"))
                continue
            if side.kind == "file" and is_binary(side.data):
                left_out.append(LeftOut(path_text, "binary", f"{side.size} bytes"))
                continue
            text, found = screened_text(side, path_text, rules)
            findings += found
            if text is None:
                left_out.append(LeftOut(path_text, "holds a secret", f"{len(found)} found"))
                continue
            rendered = section(side.kind, path_text, text, side.executable)
            cost = len(rendered.encode("utf-8"))
            if cost > budget:
                left_out.append(LeftOut(path_text, "over the snapshot cap", f"{side.size} bytes"))
                continue
            budget -= cost
            inlined.append((path_text, side.size))
            parts.append(rendered)
        if left_out:
            parts.append(f"=== not included [{len(left_out)} entries] ===\n")
            parts.extend(item.render() + "\n" for item in left_out)
        parts.append(f"=== end of snapshot: commit {commit} ===\n")
        return _finish(commit, parts, inlined, left_out, excluded, findings, tuple(order))
    except (pygit2.GitError, KeyError, ValueError) as error:
        raise RepositoryError(f"cannot read commit {commit} in {path}: {error}") from None


def _order(repo: pygit2.Repository, target: pygit2.Commit, previous: Epoch | None, paths: Iterable[str]) -> list[str]:
    if previous is not None and previous.base is not None and previous.order:
        old = repo.get(previous.base)
        if old is not None:
            changed = changed_paths(old.peel(pygit2.Tree), target.tree)
            return carry_order(previous.order, changed, paths, last_changes(repo, target, old.id))
    return least_recent_first(paths, last_changes(repo, target))


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: bytes) -> Iterator[tuple[bytes, int, pygit2.Oid]]:
    """(raw path, file mode, object id) for every blob, link and submodule below `tree`."""
    for entry in tree:
        raw_path = prefix + (entry.raw_name or (entry.name or "").encode())
        if entry.filemode == FileMode.TREE:
            yield from _walk(repo, repo[entry.id].peel(pygit2.Tree), raw_path + b"/")
        else:
            yield raw_path, entry.filemode, entry.id


def _finish(
    commit: str | None,
    parts: list[str],
    inlined: list[tuple[str, int]],
    left_out: list[LeftOut],
    excluded: list[str],
    findings: list[Finding],
    order: tuple[str, ...],
) -> Snapshot:
    size = sum(len(part.encode("utf-8")) for part in parts)
    return Snapshot(
        commit, tuple(inlined), size, tuple(left_out), tuple(excluded), tuple(findings), order, system_message(*parts)
    )
