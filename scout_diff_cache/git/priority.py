"""How important each file is to the snapshot, for choosing what to leave out when it does not fit.

`[repository] priorities` lists gitignore-style patterns, most important first: a file takes the
rank of the first one it matches, `**` standing for every file no other pattern matches. Files
that `.gitattributes` marks `linguist-generated` or `linguist-vendored` come after all of them:
GitHub's own marks for code nobody wrote by hand. The marks are read from the commit's own
`.gitattributes` files (and `info/attributes`), with git's precedence: a deeper file over a
shallower one, a later line over an earlier one. libgit2 can answer the same question path by
path, but at about half a millisecond a path, seconds for a large tree on every build.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pygit2

from ..patterns import PathMatcher, PatternError, compile_patterns
from .repository import opened

#: The attributes that send a file to the end.
MARKS = ("linguist-generated", "linguist-vendored")

#: The patterns' own pattern for "every other file".
EVERYTHING_ELSE = "**"

ATTRIBUTES = ".gitattributes"


@attrs.frozen
class Mark:
    """One line's say on a mark: files under `directory` that `matcher` picks have it, or not."""

    name: str
    directory: str
    matcher: PathMatcher
    marked: bool

    def decides(self, path: str) -> bool:
        return path.startswith(self.directory) and self.matcher.matches(path[len(self.directory) :])


def ranks(repository: Path, commit: str, paths: Iterable[str], priorities: tuple[str, ...]) -> dict[str, int]:
    """Each path's rank (0 first) under `priorities` and the marks of `commit`. Blocking."""
    matchers = [(number, compile_patterns([pattern])) for number, pattern in enumerate(priorities)]
    matchers = [(number, matcher) for number, matcher in matchers if priorities[number] != EVERYTHING_ELSE]
    others = priorities.index(EVERYTHING_ELSE) if EVERYTHING_ELSE in priorities else len(priorities)
    marked_rank = len(priorities) + 1
    with opened(repository) as repo:
        marks = list(_marks(repo, commit))
    found: dict[str, int] = {}
    for path in paths:
        said = {mark.name: mark.marked for mark in marks if mark.decides(path)}  # the last say wins
        if any(said.values()):
            found[path] = marked_rank
        else:
            found[path] = next((number for number, matcher in matchers if matcher.excludes(path)), others)
    return found


def _marks(repo: pygit2.Repository, commit: str) -> Iterator[Mark]:
    """Every line of the commit's attributes that sets or unsets a mark, weakest first."""
    files = sorted(_attribute_files(repo[commit].peel(pygit2.Commit).tree, ""), key=lambda found: found[0].count("/"))
    info = Path(repo.path) / "info" / "attributes"
    if info.is_file():
        files.append(("", info.read_bytes()))
    for directory, data in files:
        for line in data.decode("utf-8", "replace").splitlines():
            yield from _line_marks(directory, line)


def _attribute_files(tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, bytes]]:
    for entry in tree:
        if isinstance(entry, pygit2.Tree):
            yield from _attribute_files(entry, f"{prefix}{entry.name}/")
        elif entry.name == ATTRIBUTES and isinstance(entry, pygit2.Blob):
            yield prefix, entry.data


def _line_marks(directory: str, line: str) -> Iterator[Mark]:
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith(("#", '"', "!")):
        return
    for token in fields[1:]:
        name, _, value = token.lstrip("-!").partition("=")
        if name not in MARKS:
            continue
        try:
            matcher = compile_patterns([fields[0]])
        except PatternError:
            return
        yield Mark(name, directory, matcher, not token.startswith(("-", "!")) and value in ("", "true"))
