"""Opening the repository and choosing the commit the snapshot is rendered from.

Every call opens its own `pygit2.Repository`: libgit2 objects must not be shared between the
threads these calls run on, opening costs well under a millisecond, and a fresh handle sees a
repository that was repaired or replaced since the last call.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import SortMode

from ..config import Config
from ..errors import RepositoryError
from ..patterns import PathMatcher, compile_patterns
from .secrets import SECRET_FILES, Finding, redact

#: libgit2 knows the empty tree without it being in the object database.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@attrs.frozen
class ContentRules:
    """Which files are sent with their contents, and how secrets in them are treated; shared by
    the snapshot and the diff."""

    exclude: PathMatcher
    max_file_bytes: int
    secrets: str = "redact"
    secret_files: PathMatcher = attrs.field(factory=lambda: compile_patterns(SECRET_FILES))
    #: Paths the epoch's snapshot left out for its cap: their diffs stay stubs, or the diff would
    #: carry what the cap keeps out of the prompt.
    over_cap: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Config) -> ContentRules:
        repository = config.repository
        return cls(compile_patterns(repository.exclude), repository.max_file_bytes, config.security.secrets)

    def secret_by_name(self, path: str) -> bool:
        return self.secrets != "off" and self.secret_files.excludes(path)

    def screen(self, path: str, text: str) -> tuple[str | None, list[Finding]]:
        """The text to send (None: leave the file out) and the secrets found in it."""
        if self.secrets == "off":
            return text, []
        redacted, findings = redact(path, text)
        if self.secrets == "exclude-file":
            return (None if findings else text), findings
        return redacted, findings


def open_repository(path: Path) -> pygit2.Repository:
    try:
        repo = pygit2.Repository(str(path))
    except (pygit2.GitError, OSError) as error:
        raise RepositoryError(f"cannot open the git repository at {path}: {error}") from None
    if repo.workdir is None:
        raise RepositoryError(f"the repository at {path} has no work tree")
    return repo


@contextlib.contextmanager
def opened(path: Path) -> Iterator[pygit2.Repository]:
    """The repository for one piece of work, its libgit2 memory (index, caches) released after it.

    A pygit2 `Repository` sits in a reference cycle (with its branch, reference and remote
    collections), so dropping it frees nothing until a full pass of the cyclic collector: a
    request's diff would leave about a megabyte behind it, every request.
    """
    repo = open_repository(path)
    try:
        yield repo
    finally:
        repo.free()


def head_commit(repo: pygit2.Repository) -> pygit2.Commit | None:
    """The commit HEAD points at (detached or not), or None in a repository with no commits."""
    try:
        if repo.head_is_unborn:
            return None
        return repo.head.peel(pygit2.Commit)
    except (pygit2.GitError, KeyError) as error:
        raise RepositoryError(f"cannot resolve HEAD in {repo.workdir}: {error}") from None


def repository_key(repo: pygit2.Repository, commit: pygit2.Commit, known: tuple[str, str] | None = None) -> str:
    """A name for the repository that every clone shares and no rebase changes: its first commit's.

    Walks `commit`'s first-parent line to its root once (a start), never per request; a rebase stops
    at the `known` (commit, name) of the previous base when it meets it, since their roots agree.
    """
    walker = repo.walk(commit.id, SortMode.NONE)
    walker.simplify_first_parent()
    root = commit
    for seen in walker:
        if known is not None and str(seen.id) == known[0]:
            return known[1]
        root = seen
    return "scout-" + hashlib.sha256(str(root.id).encode()).hexdigest()[:16]


def base_tree(repo: pygit2.Repository, base: pygit2.Commit | None) -> pygit2.Tree:
    return base.tree if base is not None else repo[EMPTY_TREE].peel(pygit2.Tree)


def short(commit_id: str | None) -> str:
    return commit_id[:12] if commit_id else "none"
