"""What the model is shown of one path: its content as git stores it, screened, under a header.

The snapshot and every diff read a path through here, so the two always agree on a file's text:
the content as git stores it (work-tree files pass through the repository's clean filters, such as
`.gitattributes` end-of-line conversion), decoded as UTF-8 with U+FFFD for invalid bytes, secrets
replaced by their placeholders. Work-tree files are read with `read()` into memory, never through a
memory map: a file truncated by an editor or a checkout while it is read then gives shorter bytes,
not a SIGBUS that kills the process. No entry can fail the whole: one that cannot be read (a FIFO,
a socket, permission denied, a clean filter that fails, an object missing from the database) is a
side that says why, shown as a stub.

Headers carry the path in one spelling (UTF-8, or a JSON string when it holds control characters)
and a bracketed list that never contains brackets, so a parser finds the path by the last ` [`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import attrs
import pygit2
from pygit2.enums import FileMode, FilterMode

from .repository import ContentRules
from .secrets import Finding

#: Characters that make a path spelled as a JSON string: the control characters and DEL.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f]")

#: git's own test for binary content: a NUL byte in the first 8,000 bytes.
BINARY_PROBE = 8000

#: How much larger than max_file_bytes a filtered work-tree file may be and still be read.
CLEANED_SLACK = 2

EXECUTABLE = 0o100755
REGULAR = 0o100644

#: How a work-tree file is opened: never through a link that replaced it, never waiting for a
#: writer on a FIFO that did (`fstat` then says what it is, and it is not read).
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


@attrs.frozen
class Side:
    """What one path holds on one side of a change: in a tree, or in the work tree."""

    kind: str  # "file", "symlink" or "submodule"
    mode: int
    size: int
    #: The bytes (a link's target, a submodule's commit id); None when larger than max_file_bytes,
    #: or unreadable.
    data: bytes | None = attrs.field(repr=False)
    #: Why the bytes could not be read ("fifo", "permission denied", "object missing", ...).
    unreadable: str | None = None

    @property
    def executable(self) -> bool:
        return self.mode == EXECUTABLE


def path_text(path: str) -> str:
    """A path as the model reads it: pygit2 and `os` give bytes that are not UTF-8 as surrogate
    escapes, which no text encoding takes; they become U+FFFD, as in file contents."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def path_bytes(path: str) -> bytes:
    """A path as git and the file system have it, for the libgit2 calls that take no surrogate escapes."""
    return path.encode("utf-8", "surrogateescape")


def spell(path: str) -> str:
    """The one spelling of a path in every header: its text, or a JSON string if a line could break."""
    path = path_text(path)
    if path.startswith('"') or _LINE_BREAKING.search(path):
        return json.dumps(path, ensure_ascii=False)
    return path


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_PROBE]


def kind_of(mode: int) -> str:
    if mode == FileMode.LINK:
        return "symlink"
    return "submodule" if mode == FileMode.COMMIT else "file"


def tree_side(repo: pygit2.Repository, tree: pygit2.Tree, path: str, rules: ContentRules) -> Side | None:
    """The path as `tree` has it; None where it holds nothing (or a directory)."""
    try:
        entry = tree[path]
    except KeyError:
        return None
    return entry_side(repo, entry.filemode, entry.id, rules)


def entry_side(repo: pygit2.Repository, mode: int, oid: pygit2.Oid, rules: ContentRules) -> Side | None:
    if mode == FileMode.TREE:
        return None
    if mode == FileMode.COMMIT:
        return Side("submodule", mode, 0, str(oid).encode())
    kind, kept = kind_of(mode), mode if mode in (EXECUTABLE, FileMode.LINK) else REGULAR
    try:
        size = repo.odb.read_header(oid)[1]
        # the object database's read, not `repo[oid]`: half the time, without an object to build
        data = repo.odb.read(oid)[1] if size <= rules.max_file_bytes or mode == FileMode.LINK else None
    except KeyError:  # a partial clone's, or a damaged repository's
        return Side(kind, kept, 0, None, "object missing")
    except (pygit2.GitError, OSError):
        return Side(kind, kept, 0, None, "object unreadable")
    return Side(kind, kept, size, data)


def worktree_side(repo: pygit2.Repository, path: str, rules: ContentRules, tracked_mode: int | None) -> Side | None:
    """The path as the work tree has it now, in the form git would store; None where it is absent.

    `tracked_mode` is the mode the index or HEAD gives it: a submodule's directory is one, and with
    `core.fileMode = false` the executable bit comes from there. Only a regular file is opened.
    """
    full = Path(repo.workdir) / path
    try:
        info = os.lstat(full)
        if stat.S_ISLNK(info.st_mode):
            target = os.fsencode(os.readlink(full))
            return Side("symlink", FileMode.LINK, len(target), target)
    except (FileNotFoundError, NotADirectoryError):
        return None  # gone (or a parent became a file) while we looked: absent, as git would say
    except OSError as error:  # a directory above it cannot be searched, say: what git has there, unread
        mode = tracked_mode if tracked_mode is not None else REGULAR
        return Side(kind_of(mode), mode, 0, None, _failure(error))
    if stat.S_ISDIR(info.st_mode):
        return _submodule(repo, path) if tracked_mode == FileMode.COMMIT else None
    if _honours_file_mode(repo):
        mode = EXECUTABLE if info.st_mode & stat.S_IXUSR else REGULAR
    else:
        mode = EXECUTABLE if tracked_mode == EXECUTABLE else REGULAR
    if not stat.S_ISREG(info.st_mode):
        return Side("file", mode, 0, None, _special(info.st_mode))
    return _file_side(repo, full, path, info.st_size, mode, rules)


def cannot_open(root: str, path: str) -> bool:
    """Whether a work-tree file is there but cannot be opened for reading (only a regular file is
    ever opened: a device may do something when it is)."""
    full = Path(root) / path
    try:
        if stat.S_ISREG(os.lstat(full).st_mode):
            os.close(os.open(full, _READ_FLAGS))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return False


def _file_side(
    repo: pygit2.Repository, full: Path, path: str, size: int, mode: int, rules: ContentRules
) -> Side | None:
    """A regular file's side: read (no more than could be shown) and cleaned, or why it cannot be."""
    try:
        filters = repo.load_filter_list(path_bytes(path), FilterMode.CLEAN)  # type: ignore[arg-type]  # takes bytes too
        # the limit is on the stored form: a clean filter (CRLF to LF) may shrink the file
        readable = rules.max_file_bytes * (CLEANED_SLACK if filters is not None and len(filters) else 1)
        if size > readable:
            return Side("file", mode, size, None)
        with open(os.open(full, _READ_FLAGS), "rb") as file:
            now = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(now):  # replaced since its lstat
                return Side("file", mode, 0, None, _special(now))
            data = file.read(readable + 1)
        if filters is not None and len(filters):
            data = filters.apply_to_buffer(data)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # permission denied, a link that replaced it (ELOOP), an I/O error...
        return Side("file", mode, size, None, _failure(error))
    except pygit2.GitError:  # core.safecrlf refusing a conversion, say: git would not store it either
        return Side("file", mode, size, None, "clean filter failed")
    if len(data) > rules.max_file_bytes:
        return Side("file", mode, len(data), None)
    return Side("file", mode, len(data), data)


def _special(mode: int) -> str:
    """What a work-tree entry that is not a file, a link or a directory is: why it is never read."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "socket" if stat.S_ISSOCK(mode) else "device"  # a character or block device


def _failure(error: OSError) -> str:
    """Why an entry could not be read, in a few fixed words (the metric's label, the stub's detail)."""
    if isinstance(error, PermissionError):
        return "permission denied"
    return errno.errorcode.get(error.errno, "read error") if error.errno else "read error"


def _honours_file_mode(repo: pygit2.Repository) -> bool:
    try:
        return repo.config.get_bool("core.filemode")
    except (KeyError, pygit2.GitError):
        return True


def _submodule(repo: pygit2.Repository, path: str) -> Side | None:
    try:
        entry = repo.index[path]
    except KeyError:
        return None
    return Side("submodule", FileMode.COMMIT, 0, str(entry.id).encode())


def screened_text(side: Side, path: str, rules: ContentRules) -> tuple[str | None, list[Finding]]:
    """The text the model is shown of a side's bytes (None: leave it out for its secrets)."""
    assert side.data is not None
    if side.kind != "file":
        return side.data.decode("utf-8", "replace"), []
    return rules.screen(path, side.data.decode("utf-8", "replace"))


@attrs.frozen
class Stub:
    """Why a side's contents are not shown: one of the snapshot's "not included" reasons, and a
    detail about the side (never about another side of the path)."""

    reason: str  # "binary", "too large", "submodule", "secret by its name", "holds a secret", "unreadable"
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


#: Decided by the path alone, before its contents are read.
SECRET_BY_NAME = Stub("secret by its name", "not read")

#: The reason of a side that could not be read; its detail says why (see `Side.unreadable`).
UNREADABLE = "unreadable"


def shown(side: Side, path: str, rules: ContentRules) -> tuple[str | Stub, list[Finding]]:
    """What the model is shown of a side: its screened text, or the stub that says why not, with
    the secrets found. The one judgment of the snapshot and every diff, so they never disagree."""
    if rules.secret_by_name(path):
        return SECRET_BY_NAME, []
    if side.unreadable is not None:
        return Stub(UNREADABLE, side.unreadable), []
    if side.kind == "submodule":
        assert side.data is not None  # its commit's id
        return Stub("submodule", f"at {side.data.decode()}"), []
    if side.data is None:
        return Stub("too large", f"{side.size} bytes"), []
    if side.kind == "file" and is_binary(side.data):
        return Stub("binary", f"{side.size} bytes"), []
    text, found = screened_text(side, path, rules)
    if text is None:
        return Stub("holds a secret", f"{len(found)} found"), found
    return text, found


def section(kind: str, path: str, text: str, executable: bool) -> str:
    """A snapshot section: the header counts the text's lines, so no line of it can end the section."""
    final = text.endswith("\n") or not text
    info = [f"{text.count(chr(10)) + (0 if final else 1)} lines"]
    if not final:
        info.append("no newline at end")
    if executable:
        info.append("executable")
    return f"=== {kind}: {spell(path)} [{', '.join(info)}] ===\n{text}{'' if final else chr(10)}"
