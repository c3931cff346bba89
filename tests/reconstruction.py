"""Rebuilding the work tree from the two messages the upstream received, to prove them faithful.

`parse_snapshot` and `parse_diff` read the messages by the grammar in README's "The layout,
precisely": a header is recognised only where the grammar expects one, file text and hunk lines are
counted (never searched), and anything else fails with an AssertionError naming the line.
`reconstruct` applies the diff's groups to the snapshot strictly (every context and removed line
must match), `work_tree` says with pygit2 alone what git holds for every path now, and `check`
asserts the two agree.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import attrs
import pygit2

from scout_diff_cache.config import DEFAULT_EXCLUDE
from scout_diff_cache.git.secrets import redact
from scout_diff_cache.patterns import compile_patterns


class File(NamedTuple):
    """A path's content as the model should see it."""

    kind: str  # "file" or "symlink"
    text: str
    executable: bool


class Hidden(NamedTuple):
    """A path the messages name without its contents: a stub, or an entry not included."""

    kind: str  # "file", "symlink" or "submodule"
    reason: str


State = dict[str, File | Hidden]

NOT_INCLUDED_REASONS = (
    "binary",
    "too large",
    "over the snapshot cap",
    "over the window",
    "submodule",
    "secret by its name",
    "holds a secret",
    "unreadable",
)

SECTION = re.compile(r"=== (file|symlink): (.*) \[(\d+) lines(, no newline at end)?(, executable)?\] ===")
NOT_INCLUDED = re.compile(r"=== not included \[(\d+) entries\] ===")
SNAPSHOT_END = re.compile(r"=== end of snapshot: commit ([0-9a-f]{40}) ===")

CLEAN_DIFF = "# Working diff\n\nNo changes: the working tree matches the snapshot's commit.\n"
CHANGE = re.compile(r"=== (file|symlink|submodule): (.*) \[(added|deleted|modified)((?:, [^\[\]]+)*)\] ===")
LABEL = re.compile(r"=== the changes above (.+) ===")
ORIGINS = (
    re.compile(r"are not committed yet"),
    re.compile(r"were committed as [0-9a-f]{40}: .*"),
    re.compile(r"were made in [1-9]\d* commits up to [0-9a-f]{40}"),
    re.compile(r"were made since [0-9a-f]{40} on another line of history"),
)
FOOTER = re.compile(r"=== snapshot commit (\S+); HEAD is (.+) ===")
HUNK = re.compile(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@")
NO_NEWLINE = "\\ No newline at end of file"
MODE = re.compile(r"mode (\d{6}) -> (\d{6})")
HIDDEN = "contents not shown: "
#: Why a change's contents are not shown: the snapshot's reasons (but its cap), or the cap's own.
STUB_REASONS = (
    *(reason for reason in NOT_INCLUDED_REASONS if reason not in ("over the snapshot cap", "over the window")),
    "not in the snapshot",
)
STUB = re.compile(rf"({'|'.join(map(re.escape, STUB_REASONS))}) \((.+)\)")
WHOLE_TEXT = "whole text"


@attrs.frozen
class Snapshot:
    files: dict[str, File]
    #: path -> reason, for the entries listed as not included.
    not_included: dict[str, str]
    #: None for the fixed text of a repository with no commits.
    commit: str | None


@attrs.frozen
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    #: (mark, text): the text ends in "\n" unless the file has no newline there.
    lines: tuple[tuple[str, str], ...]


@attrs.frozen
class Change:
    kind: str
    path: str
    status: str
    details: tuple[str, ...]
    hunks: tuple[Hunk, ...]

    @property
    def hidden(self) -> str | None:
        """Why the contents are not shown, or None when they are."""
        return next((detail[len(HIDDEN) :] for detail in self.details if detail.startswith(HIDDEN)), None)

    @property
    def whole(self) -> bool:
        """Its hunk holds all of its text: the file's earlier contents were not shown."""
        return WHOLE_TEXT in self.details


@attrs.frozen
class Group:
    origin: str
    changes: tuple[Change, ...]


@attrs.frozen
class WorkingDiff:
    groups: tuple[Group, ...]
    footer: str


class Lines:
    """A message's lines (each ended by "\\n"), read front to back; errors name the line."""

    def __init__(self, text: str, name: str) -> None:
        if text and not text.endswith("\n"):
            raise AssertionError(f"{name}: the last line does not end in a newline: {text[-80:]!r}")
        self.name = name
        self.lines = text.split("\n")[:-1]
        self.position = 0

    def peek(self) -> str | None:
        return self.lines[self.position] if self.position < len(self.lines) else None

    def take(self, what: str) -> str:
        if self.position >= len(self.lines):
            raise AssertionError(f"{self.name}: the text ends where {what} was expected")
        self.position += 1
        return self.lines[self.position - 1]

    def fail(self, message: str) -> NoReturn:
        line = self.lines[self.position - 1] if self.position else None
        raise AssertionError(f"{self.name} line {self.position}: {message}: {line!r}")

    def skip_intro(self, title: str) -> bool:
        """Past the title and fixed paragraph, to the first header; False when there is none."""
        if self.take("the title") != title:
            self.fail(f"expected the title {title!r}")
        first = next((n for n in range(self.position, len(self.lines)) if self.lines[n].startswith("=== ")), None)
        if first is None:
            return False
        if self.lines[first - 1] != "":
            self.position = first
            self.fail("the intro must end with an empty line before the first header")
        self.position = first
        return True


def decode_path(spelled: str, lines: Lines) -> str:
    """A header's path: its text, or a JSON string literal when it would break a line."""
    if spelled.startswith('"'):
        try:
            path = json.loads(spelled)
        except json.JSONDecodeError:
            lines.fail("a path starting with '\"' must be a JSON string literal")
        if not isinstance(path, str):
            lines.fail("a quoted path must be a JSON string")
        return path
    if any(ord(char) < 32 or ord(char) == 127 for char in spelled):
        lines.fail("a path holding control characters must be a JSON string literal")
    if not spelled:
        lines.fail("empty path")
    return spelled


def parse_snapshot(text: str) -> Snapshot:
    """The snapshot message as {path: File} and the not-included entries. Strict."""
    lines = Lines(text, "snapshot")
    if not lines.skip_intro("# Repository snapshot"):
        return Snapshot({}, {}, None)  # no commits yet: a fixed text without sections
    files: dict[str, File] = {}
    not_included: dict[str, str] = {}
    while True:
        header = lines.take("a section, the not-included list or the end line")
        if section := SECTION.fullmatch(header):
            kind, spelled, count, no_newline, executable = section.groups()
            path = decode_path(spelled, lines)
            if path in files:
                lines.fail("a path shown twice")
            body = [lines.take(f"line {n + 1} of {count} of {path}") for n in range(int(count))]
            content = "".join(line + "\n" for line in body)
            if no_newline:
                if not body:
                    lines.fail("an empty file cannot lack a final newline")
                content = content[:-1]
            if kind == "symlink" and (len(body) != 1 or not no_newline or executable):
                lines.fail("a symlink's body is its target: one line, no newline at end, never executable")
            files[path] = File(kind, content, bool(executable))
        elif listing := NOT_INCLUDED.fullmatch(header):
            for _ in range(int(listing.group(1))):
                path, reason = _not_included(lines.take("a not-included entry"), lines)
                if path in files or path in not_included:
                    lines.fail("a path listed twice")
                not_included[path] = reason
            if not SNAPSHOT_END.fullmatch(lines.take("the end line")):
                lines.fail("expected the end line after the not-included list")
            break
        elif not SNAPSHOT_END.fullmatch(header):
            lines.fail("not a header the snapshot grammar allows here")
        else:
            break
    if lines.peek() is not None:
        lines.take("")
        lines.fail("text after the end line")
    commit = SNAPSHOT_END.fullmatch(lines.lines[-1])
    assert commit is not None
    return Snapshot(files, not_included, commit.group(1))


def _not_included(line: str, lines: Lines) -> tuple[str, str]:
    reason = next((reason for reason in NOT_INCLUDED_REASONS if line.startswith(reason + ": ")), None)
    if reason is None or not line.endswith(")") or " (" not in line:
        lines.fail(f"expected REASON: PATH (DETAIL), REASON one of {NOT_INCLUDED_REASONS}")
    spelled, _ = line[len(reason) + 2 : -1].rsplit(" (", 1)
    return decode_path(spelled, lines), reason


def parse_diff(text: str) -> WorkingDiff:
    """The working-diff message as its groups of changes. Strict: counts are checked, junk fails."""
    lines = Lines(text, "working diff")
    if text.startswith(CLEAN_DIFF):
        lines.position = CLEAN_DIFF.count("\n")
        footer = lines.take("the footer")
        if not FOOTER.fullmatch(footer):
            lines.fail("expected the footer after 'No changes'")
        if lines.peek() is not None:
            lines.take("")
            lines.fail("text after the footer")
        return WorkingDiff((), footer)
    if not lines.skip_intro("# Working diff"):
        lines.fail("no footer")
    groups: list[Group] = []
    changes: list[Change] = []
    while True:
        header = lines.take("a change, a label or the footer")
        if change := CHANGE.fullmatch(header):
            changes.append(_change(change, lines))
        elif label := LABEL.fullmatch(header):
            origin = label.group(1)
            if not any(pattern.fullmatch(origin) for pattern in ORIGINS):
                lines.fail("unknown origin in a label")
            if not changes:
                lines.fail("a label must follow at least one change")
            groups.append(Group(origin, tuple(changes)))
            changes = []
        elif FOOTER.fullmatch(header):
            if changes:
                lines.fail("changes without a label before the footer")
            if lines.peek() is not None:
                lines.take("")
                lines.fail("text after the footer")
            return WorkingDiff(tuple(groups), header)
        else:
            lines.fail("not a header the diff grammar allows here")


def _change(header: re.Match[str], lines: Lines) -> Change:
    kind, spelled, status, detail_text = header.groups()
    path = decode_path(spelled, lines)
    details: list[str] = []
    for detail in detail_text.split(", ")[1:]:
        if detail in ("executable", WHOLE_TEXT) or MODE.fullmatch(detail) or detail.startswith(HIDDEN):
            details.append(detail)
        elif details and details[-1].startswith(HIDDEN):
            details[-1] += ", " + detail  # a detail may hold a comma
        else:
            lines.fail(f"unknown detail {detail!r}")
    hunks = []
    while (line := lines.peek()) is not None and line.startswith("@@"):
        hunks.append(_hunk(lines))
    change = Change(kind, path, status, tuple(details), tuple(hunks))
    if change.hidden is not None and not STUB.fullmatch(change.hidden):
        lines.fail(f"{path}: expected contents not shown: REASON (DETAIL), REASON one of {STUB_REASONS}")
    if change.whole and (status != "modified" or change.hidden is not None):
        lines.fail(f"{path}: only a modified change that shows its contents can show its whole text")
    if hunks and (change.hidden is not None or status == "deleted"):
        lines.fail(f"{path}: a {status} change {'with contents not shown ' if change.hidden else ''}has no hunks")
    first = hunks[0] if hunks else None
    whole = status == "added" or change.whole
    if whole and first and (len(hunks) > 1 or first.old_start or first.old_count or first.new_start != 1):
        lines.fail(f"{path}: an added file (or a whole text) has one hunk @@ -0,0 +1,N @@")
    if status == "added" and any(MODE.fullmatch(detail) for detail in details):
        lines.fail(f"{path}: an added file has no old mode")
    return change


def _hunk(lines: Lines) -> Hunk:
    header = HUNK.fullmatch(lines.take("a hunk header"))
    if header is None:
        lines.fail("expected a hunk header '@@ -A,B +C,D @@'")
    old_start, old_count, new_start, new_count = (int(number) for number in header.groups())
    if not old_count and not new_count:
        lines.fail("an empty hunk")
    old, new = old_count, new_count
    body: list[tuple[str, str]] = []
    while old or new:
        line = lines.take(f"{old} more old and {new} more new lines of the hunk")
        mark = line[:1]
        if mark == " " and old and new:
            old, new = old - 1, new - 1
        elif mark == "-" and old:
            old -= 1
        elif mark == "+" and new:
            new -= 1
        else:
            lines.fail(f"a hunk line must start with ' ', '-' or '+' and fit the counts ({old} old, {new} new left)")
        ending = "\n"
        if lines.peek() == NO_NEWLINE:
            lines.take(NO_NEWLINE)
            ending = ""
        body.append((mark, line[1:] + ending))
    return Hunk(old_start, old_count, new_start, new_count, tuple(body))


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only (a "\\r" stays in its line), each keeping its "\\n"."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def apply_hunks(text: str, hunks: tuple[Hunk, ...], path: str) -> str:
    """`text` with `hunks` applied; every context and removed line must match exactly."""
    old = split_lines(text)
    result: list[str] = []
    cursor = 0
    for hunk in hunks:
        start = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        new_start = hunk.new_start - 1 if hunk.new_count else hunk.new_start
        where = f"{path}: hunk @@ -{hunk.old_start},{hunk.old_count} +{hunk.new_start},{hunk.new_count} @@"
        if start < cursor or start > len(old):
            raise AssertionError(
                f"{where}: starts outside the file ({len(old)} lines) or before the previous hunk ends"
            )
        if new_start != len(result) + start - cursor:
            raise AssertionError(f"{where}: the new start does not follow from the old one and earlier hunks")
        removed = [line for mark, line in hunk.lines if mark != "+"]
        if old[start : start + len(removed)] != removed:
            raise AssertionError(
                f"{where}: context and removed lines do not match the file\n"
                + _short_diff(old[start : start + len(removed)], removed, "file", "hunk")
            )
        result += old[cursor:start] + [line for mark, line in hunk.lines if mark != "-"]
        cursor = start + len(removed)
    result += old[cursor:]
    if any(not line.endswith("\n") for line in result[:-1]):
        raise AssertionError(f"{path}: a line without a newline is not the file's last after the hunks")
    return "".join(result)


def reconstruct(snapshot: Snapshot, diff: WorkingDiff) -> State:
    """The snapshot with every group of the diff applied in order: {path: File or Hidden}."""
    state: State = dict(snapshot.files)
    for path, reason in snapshot.not_included.items():
        state[path] = Hidden("submodule" if reason == "submodule" else "file", reason)
    for number, group in enumerate(diff.groups, 1):
        for change in group.changes:
            try:
                _apply(state, change)
            except AssertionError as error:
                raise AssertionError(f"group {number} ({group.origin}): {error}") from None
    return state


def _apply(state: State, change: Change) -> None:
    path, current = change.path, state.get(change.path)
    if change.status == "added":
        if current is not None:
            raise AssertionError(f"{path}: added, but it is already there ({current.kind})")
    elif current is None:
        raise AssertionError(f"{path}: {change.status}, but there is no such path")
    elif current.kind != change.kind and not (isinstance(current, Hidden) and change.status == "deleted"):
        raise AssertionError(
            f"{path}: a {change.kind} change of a {current.kind} (a type change is deleted, then added)"
        )
    if change.status == "deleted":
        del state[path]
        return
    if change.kind == "submodule" or change.hidden is not None:
        state[path] = Hidden(change.kind, change.hidden or "submodule")
        return
    if change.whole != isinstance(current, Hidden):
        raise AssertionError(
            f"{path}: hunks for a path whose contents were never shown ({current.reason})"
            if isinstance(current, Hidden)
            else f"{path}: its whole text, though its contents were shown"
        )
    before = current.text if isinstance(current, File) else ""
    state[path] = File(change.kind, apply_hunks(before, change.hunks, path), _executable(change, current))


def _executable(change: Change, current: File | Hidden | None) -> bool:
    """What the change says of the executable bit; a stub's mode was never shown, so not checked."""
    for detail in change.details:
        if detail == "executable":
            return True
        if mode := MODE.fullmatch(detail):
            old, new = mode.groups()
            if isinstance(current, File) and (old == "100755") != current.executable:
                raise AssertionError(f"{change.path}: the old mode {old} is not what the file had")
            return new == "100755"
    return current.executable if isinstance(current, File) else False


def work_tree(path: Path) -> dict[str, File | Hidden]:
    """What git holds for every path now: tracked (index, conflicts included) and untracked files
    that are not ignored, present in the work tree, as the model should see them (Hidden: there,
    but no text can be had of it)."""
    repo = pygit2.Repository(str(path))
    index = repo.index
    candidates = {entry.path for entry in index if entry.mode != pygit2.enums.FileMode.COMMIT}
    if index.conflicts is not None:
        candidates |= {entry.path for sides in index.conflicts for entry in sides if entry is not None}
    candidates |= {name for name, flags in repo.status().items() if flags & pygit2.enums.FileStatus.WT_NEW}
    root = Path(repo.workdir)
    found = {}
    for name in candidates:
        file = _work_tree_file(repo, root, name)
        if file is not None:
            found[name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")] = file
    return found


def _work_tree_file(repo: pygit2.Repository, root: Path, name: str) -> File | Hidden | None:
    full = root / name
    try:
        info = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(info.st_mode):
        return File("symlink", os.fsencode(os.readlink(full)).decode("utf-8", "replace"), False)
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return Hidden("file", "not a regular file")
    raw = name.encode("utf-8", "surrogateescape")  # a name that is not UTF-8 as its bytes (pygit2 takes them)
    try:
        data = full.read_bytes()
        filters = repo.load_filter_list(raw, pygit2.enums.FilterMode.CLEAN)  # type: ignore[arg-type]
        if filters is not None:
            data = filters.apply_to_buffer(data)
    except (OSError, pygit2.GitError) as error:
        return Hidden("file", str(error))
    text = redact(name, data.decode("utf-8", "replace"))[0]
    return File("file", text, bool(info.st_mode & stat.S_IXUSR))


def default_left_out(path: str) -> bool:
    """The paths the default `[repository] exclude` keeps out of both messages without a word."""
    return _DEFAULT_EXCLUDE.excludes(path)


_DEFAULT_EXCLUDE = compile_patterns(DEFAULT_EXCLUDE)


def check(
    snapshot_text: str, diff_text: str, repo_path: Path, left_out_ok: Callable[[str], bool] = default_left_out
) -> State:
    """Assert that snapshot plus diff rebuild exactly the work tree; return what they rebuild.

    A path the messages show without contents only has to exist; a path `left_out_ok` accepts
    (excluded by config) may be missing.
    """
    return compare(reconstruct(parse_snapshot(snapshot_text), parse_diff(diff_text)), repo_path, left_out_ok)


def compare(rebuilt: State, repo_path: Path, left_out_ok: Callable[[str], bool] = default_left_out) -> State:
    """Assert that what the messages rebuild is exactly the work tree (see `check`)."""
    expected = work_tree(repo_path)
    wrong: list[tuple[str, str, File | None, File | Hidden | None]] = []
    for path in sorted(set(rebuilt) | set(expected)):
        got, want = rebuilt.get(path), expected.get(path)
        if isinstance(got, Hidden):  # what it holds is not shown: it only has to be there
            if want is None and got.kind != "submodule":
                wrong.append((path, f"shown as {got.kind} '{got.reason}', but not in the work tree", None, None))
        elif got != want and not (got is None and left_out_ok(path)):
            wrong.append((path, _what_differs(got, want), got, want))
    if wrong:
        path, problem, got, want = wrong[0]
        detail = ""
        if isinstance(got, File) and isinstance(want, File):
            detail = _short_diff(split_lines(got.text), split_lines(want.text), "messages", "work tree")
        more = f"\n(and {len(wrong) - 1} more: {', '.join(p for p, *_ in wrong[1:6])})" if len(wrong) > 1 else ""
        raise AssertionError(f"{path}: {problem}\n{detail}{more}")
    return rebuilt


def _what_differs(got: File | None, want: File | Hidden | None) -> str:
    if got is None:
        return f"missing from the messages (the work tree has a {want.kind if want else '?'})"
    if want is None:
        return f"the messages have a {got.kind} the work tree does not"
    if isinstance(want, Hidden):
        return f"the messages show a text the work tree cannot give ({want.reason})"
    return (
        ", ".join(
            f"{field}: messages {getattr(got, field)!r}, work tree {getattr(want, field)!r}"
            for field in ("kind", "executable")
            if getattr(got, field) != getattr(want, field)
        )
        or "the text differs"
    )


def _short_diff(got: list[str], want: list[str], got_name: str, want_name: str, limit: int = 30) -> str:
    shown_got, shown_want = ([repr(line) for line in side] for side in (got, want))
    lines = list(difflib.unified_diff(shown_got, shown_want, got_name, want_name, n=2, lineterm=""))
    if len(lines) > limit:
        lines = [*lines[:limit], f"... {len(lines) - limit} more lines"]
    return "\n".join(lines) + "\n"


CHANGED_SINCE = "were made in the work tree since it was last shown"


def _change_text(message: dict[str, object]) -> str | None:
    """The change a message holds: all of a system message's text, or a user message's opening."""
    content = message.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        content = content[0].get("text")
    if not isinstance(content, str) or not content.startswith("# Work tree changes"):
        return None
    if message.get("role") == "system":
        return content
    label = f"=== the changes above {CHANGED_SINCE} ===\n"
    return content[: content.index(label) + len(label)]


def parse_change_message(text: str) -> Group:
    """A conversation's change message: the title, a fixed paragraph, changes, then one label."""
    lines = Lines(text, "change message")
    if not lines.skip_intro("# Work tree changes"):
        lines.fail("no changes")
    changes: list[Change] = []
    while True:
        header = lines.take("a change or the label")
        if change := CHANGE.fullmatch(header):
            changes.append(_change(change, lines))
        elif (label := LABEL.fullmatch(header)) and label.group(1) == CHANGED_SINCE and changes:
            if lines.peek() is not None:
                lines.take("")
                lines.fail("text after the label")
            return Group(CHANGED_SINCE, tuple(changes))
        else:
            lines.fail("not a header a change message allows here")


def check_conversation(
    messages: list[dict[str, object]], repo_path: Path, left_out_ok: Callable[[str], bool] = default_left_out
) -> State:
    """`check` for a conversation's upstream messages: the snapshot, the working diff it started with,
    then every change among the client's messages (a system message of its own, or the start of a
    user message), applied in order."""
    snapshot, start = (str(message.get("content")) for message in messages[:2])
    changes = [parse_change_message(text) for message in messages[2:] if (text := _change_text(message))]
    diff = parse_diff(start)
    rebuilt = reconstruct(parse_snapshot(snapshot), attrs.evolve(diff, groups=(*diff.groups, *changes)))
    return compare(rebuilt, repo_path, left_out_ok)


#: The working diff's last line: where the strict layout's system text goes on to the client's own.
DIFF_FOOTER = re.compile(r"=== snapshot commit [^\n]* ===\n")
#: Where the strict layout's system text goes on from the snapshot to the working diff.
SNAPSHOT_TO_DIFF = re.compile(r"=== end of snapshot: commit [0-9a-f]{40} ===\n(?=# Working diff\n)")


def split_strict(text: str) -> tuple[str, str, str]:
    """The strict layout's one system text as the snapshot, the working diff and the client's own
    system text (after the blank line that follows the diff; empty when it sent none)."""
    seam = SNAPSHOT_TO_DIFF.search(text)
    assert seam is not None, "no working diff right after the end of the snapshot"
    footer = DIFF_FOOTER.search(text, seam.end())
    assert footer is not None, "the working diff has no footer line"
    own = text[footer.end() :]
    assert not own or own.startswith("\n"), "the client's system text does not follow a blank line"
    return text[: seam.end()], text[seam.end() : footer.end()], own[1:]


def _system(text: str) -> dict[str, object]:
    return {"role": "system", "content": text}


def as_chat(path: str, body: dict[str, Any]) -> list[dict[str, object]]:
    """An upstream body of any of the three APIs, in either layout, as the separate layout's chat
    messages: the snapshot, the working diff, then the client's turns (for `check_conversation`)."""
    if path.endswith("/messages"):
        first, *rest = body["messages"]
        content = first["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        footer = DIFF_FOOTER.search(text)
        assert footer is not None, "the first message does not open with the working diff"
        opened = text[footer.end() :] if isinstance(content, str) else content[1:]
        turns = [{**first, "content": opened}, *rest]
        return [_system(body["system"][0]["text"][:-1]), _system(text[: footer.end()]), *turns]
    if path.endswith("/responses"):
        system, turns = body["instructions"], list(body["input"])
    else:
        system, turns = body["messages"][0]["content"], body["messages"][1:]
    if SNAPSHOT_TO_DIFF.search(system):
        snapshot, diff, _ = split_strict(system)
        return [_system(snapshot), _system(diff), *turns]
    end = SNAPSHOT_END.search(system)
    assert end is not None, "the first system text does not hold the snapshot"
    return [_system(system[: end.end() + 1]), *turns]  # Responses' own instructions follow it
