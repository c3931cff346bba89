"""How important each file is to the snapshot, for choosing what to leave out when it does not fit.

`[repository] priorities` lists gitignore-style patterns, most important first: a file takes the
rank of the first one it matches, `**` standing for every file no other pattern matches. Files
that the commit's `.gitattributes` marks `linguist-generated` or `linguist-vendored` come after all
of them: GitHub's own marks for code nobody wrote by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pygit2
from pygit2.enums import AttrCheck

from ..patterns import compile_patterns
from .content import path_bytes
from .repository import opened

#: The attributes that send a file to the end.
MARKS = ("linguist-generated", "linguist-vendored")

#: The patterns' own pattern for "every other file".
EVERYTHING_ELSE = "**"


def ranks(repository: Path, commit: str, paths: Iterable[str], priorities: tuple[str, ...]) -> dict[str, int]:
    """Each path's rank (0 first) under `priorities` and the marks of `commit`. Blocking."""
    matchers = [(number, compile_patterns([pattern])) for number, pattern in enumerate(priorities)]
    matchers = [(number, matcher) for number, matcher in matchers if priorities[number] != EVERYTHING_ELSE]
    others = priorities.index(EVERYTHING_ELSE) if EVERYTHING_ELSE in priorities else len(priorities)
    marked_rank = len(priorities) + 1
    found: dict[str, int] = {}
    with opened(repository) as repo:
        for path in paths:
            if _marked(repo, path, commit):
                found[path] = marked_rank
                continue
            found[path] = next((number for number, matcher in matchers if matcher.excludes(path)), others)
    return found


def _marked(repo: pygit2.Repository, path: str, commit: str) -> bool:
    """Whether `.gitattributes` at `commit` marks `path` generated or vendored."""
    flags = AttrCheck.INCLUDE_COMMIT | AttrCheck.NO_SYSTEM | AttrCheck.INDEX_ONLY
    try:
        return any(repo.get_attr(path_bytes(path), mark, flags, commit) in (True, "true") for mark in MARKS)
    except pygit2.GitError:
        return False
