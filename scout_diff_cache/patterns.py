"""Gitignore-style path patterns for `[repository] exclude`.

Rules, as in gitignore: a pattern without a slash matches a name at any depth; one with a slash
(not only at the end) is anchored at the repository root; a trailing slash matches directories
only; `*` and `?` stay within one path component, `**` crosses them; `!` re-includes; the last
matching pattern wins; nothing below an excluded directory can be re-included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

#: How many directories' verdicts a matcher keeps.
REMEMBERED_DIRECTORIES = 1 << 16


class PatternError(ValueError):
    pass


@attrs.frozen
class _Rule:
    regex: re.Pattern[str]
    negated: bool
    directory_only: bool
    anchored: bool


def _translate(glob: str) -> str:
    out = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                raise PatternError(f"unclosed '[' in {glob!r}")
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end + 1
        elif char == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def _compile(pattern: str) -> _Rule | None:
    if not pattern or pattern.startswith("#"):
        return None
    negated = pattern.startswith("!")
    if negated:
        pattern = pattern[1:]
    directory_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    if not pattern:
        raise PatternError("a pattern needs more than slashes and '!'")
    try:
        regex = re.compile(_translate(pattern) + r"\Z")
    except re.error as error:
        raise PatternError(f"{pattern!r}: {error}") from None
    return _Rule(regex, negated, directory_only, anchored)


@attrs.frozen
class PathMatcher:
    rules: tuple[_Rule, ...]
    #: Each directory's verdict, once asked: a tree's thousands of files share a few hundred directories.
    _directories: dict[str, bool] = attrs.field(factory=dict, eq=False, repr=False)
    #: For files and for directories, every rule that applies as one pattern over the whole path and
    #: one over the name: when neither matches, no rule does (most paths), in two calls, not one per rule.
    _any: dict[bool, tuple[re.Pattern[str], re.Pattern[str]]] = attrs.field(init=False, eq=False, repr=False)

    @_any.default
    def _combined(self) -> dict[bool, tuple[re.Pattern[str], re.Pattern[str]]]:
        def either(rules: list[_Rule]) -> re.Pattern[str]:
            return re.compile("|".join(f"(?:{rule.regex.pattern})" for rule in rules) or "(?!)")

        return {
            is_dir: (
                either([rule for rule in self.rules if rule.anchored and (is_dir or not rule.directory_only)]),
                either([rule for rule in self.rules if not rule.anchored and (is_dir or not rule.directory_only)]),
            )
            for is_dir in (False, True)
        }

    def excludes(self, path: str) -> bool:
        """True when `path` (a file path relative to the root, with `/`) is excluded."""
        parts = path.split("/")
        return (len(parts) > 1 and self._excludes_directory(path.rpartition("/")[0])) or self._verdict(parts, False)

    def matches(self, path: str) -> bool:
        """True when the rules pick `path` itself, whatever the directories above it (the way
        `.gitattributes` patterns apply: a directory's attributes are not its files')."""
        return self._verdict(path.split("/"), False)

    def _excludes_directory(self, directory: str) -> bool:
        """True when `directory` or one of the directories above it is excluded."""
        verdict = self._directories.get(directory)
        if verdict is None:
            parent, _, _ = directory.rpartition("/")
            verdict = (bool(parent) and self._excludes_directory(parent)) or self._verdict(directory.split("/"), True)
            if len(self._directories) >= REMEMBERED_DIRECTORIES:
                self._directories.clear()  # directories that came and went in a work tree: start over
            self._directories[directory] = verdict
        return verdict

    def _verdict(self, parts: list[str], is_dir: bool) -> bool:
        whole, name = self._any[is_dir]
        if not whole.match("/".join(parts)) and not name.match(parts[-1]):
            return False
        verdict = False
        for rule in self.rules:
            if rule.directory_only and not is_dir:
                continue
            subject = "/".join(parts) if rule.anchored else parts[-1]
            if rule.regex.match(subject):
                verdict = not rule.negated
        return verdict


def compile_patterns(patterns: Iterable[str]) -> PathMatcher:
    rules = (_compile(pattern.strip()) for pattern in patterns)
    return PathMatcher(tuple(rule for rule in rules if rule is not None))
