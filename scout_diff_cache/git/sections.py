"""One tree entry as the snapshot shows it: read, screened for secrets, rendered and JSON-encoded.

This is the expensive part of a snapshot (reading every blob, scanning it, escaping it), and it
depends only on the entry's path, mode and blob id and on the content rules: never on the file
order or on the other files. So it runs in worker processes, in batches, and a rebase takes every
section whose entry did not change from the previous snapshot instead of rendering it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import attrs
import pygit2

from ..encoding import encode_text
from .content import SECRET_BY_NAME, Stub, entry_side, path_text, section, shown
from .repository import ContentRules, opened
from .secrets import Finding

#: What identifies a section: the tree's path (surrogate-escaped), the file mode, the blob id.
SectionKey = tuple[str, int, str]

#: The reason of an entry the exclude patterns keep out of the snapshot's text altogether.
EXCLUDED = "excluded"


@attrs.frozen
class Section:
    """A rendered entry: either inlined (`reason` None, `encoded` its JSON-escaped text) or not."""

    path: str
    size: int
    #: Why the text is not included ("binary", "too large", ..., or EXCLUDED); None when it is.
    reason: str | None = None
    detail: str = ""
    findings: tuple[Finding, ...] = ()
    #: The rendered section, JSON-encoded without quotes (a view into a snapshot chunk once assembled).
    encoded: bytes | memoryview = attrs.field(default=b"", repr=False, eq=False)
    #: Bytes of the rendered section in UTF-8: what it costs against the snapshot cap.
    cost: int = 0


def render_entry(repo: pygit2.Repository, key: SectionKey, rules: ContentRules) -> Section:
    """The section of one entry, with the same tests in the same order as the snapshot always made."""
    raw, mode, oid = key
    path = path_text(raw)
    if rules.exclude.excludes(path):
        return Section(path, 0, EXCLUDED)
    if rules.secret_by_name(path):  # decided without reading the blob
        return Section(path, 0, SECRET_BY_NAME.reason, SECRET_BY_NAME.detail)
    side = entry_side(repo, mode, pygit2.Oid(hex=oid), rules)
    assert side is not None  # trees are walked, never rendered
    text, found = shown(side, path, rules)
    if isinstance(text, Stub):
        return Section(path, side.size, text.reason, text.detail, tuple(found))
    rendered = section(side.kind, path, text, side.executable)
    return Section(path, side.size, None, "", tuple(found), encode_text(rendered), len(rendered.encode("utf-8")))


def render_entries(repository: Path, keys: Iterable[SectionKey], rules: ContentRules) -> list[Section]:
    """Sections for `keys`, in their order: the unit of work a worker process is given."""
    with opened(repository) as repo:
        return [render_entry(repo, key, rules) for key in keys]
