"""Finding secrets before any text leaves the process, and replacing them deterministically.

A redacted secret becomes `[REDACTED:RULE:HASH]`, HASH being the first 8 hex digits of the value's
SHA-256: the same secret always gives the same placeholder, so a redacted snapshot is still
byte-identical from request to request (the prefix cache keeps working), and the value itself is
never sent, logged or shown. Findings carry path, line and rule only.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator

import attrs

#: Files that are secrets by name: left out of snapshot and diff unless `[security] secrets = off`.
SECRET_FILES = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.p12",
    "*.pfx",
    "credentials*.json",
    ".netrc",
    ".npmrc",
    ".pypirc",
)

#: Where `name = value` assignments are read as configuration.
CONFIG_LIKE = re.compile(
    r"(^|/)(\.env[^/]*|[^/]*\.(ini|cfg|conf|config|toml|ya?ml|json|properties|env|tfvars)|Dockerfile|docker-compose[^/]*)$"
)


@attrs.frozen
class Rule:
    name: str
    #: Substrings one of which every match contains (lower case: looked up in the lowered text).
    hints: tuple[str, ...]
    pattern: re.Pattern[str]
    #: The regex group holding the secret (0: the whole match).
    group: int = 0
    config_only: bool = False
    #: Exact substrings one of which every match contains, for a rule whose matches never span a line
    #: break: then only the lines holding one are scanned (the same matches, in a fraction of the time).
    anchors: tuple[str, ...] = ()
    #: For a rule whose every match starts at a hint, or at most a run of these characters before one
    #: (any case): in ASCII text the pattern is tried only at those places, not along the whole text.
    lead: str | None = None

    @property
    def anchor(self) -> re.Pattern[str]:
        """The anchors as one pattern: `re` searches for their common prefix far faster than `find` each."""
        return _any_of(self.anchors)


@functools.cache
def _any_of(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, words)))


#: Anchors of rules whose anchors start alike, searched as one: each rule then runs on the lines
#: holding any of them (a few more lines than its own), and finds the same matches in one pass less.
AWS_OR_GOOGLE = ("AKIA", "ASIA", "ABIA", "ACCA", "AIza")
GITHUB_OR_GITLAB = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-")

RULES = (
    Rule(
        "private-key",
        ("private key",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
            re.S,
        ),
    ),
    Rule(
        "aws-access-key-id",
        ("akia", "asia", "abia", "acca"),
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
        anchors=AWS_OR_GOOGLE,
    ),
    Rule(
        "aws-secret-access-key",
        ("aws",),
        re.compile(
            r"(?i)aws[a-z0-9_.\- ]{0,20}(?:secret|sk)[a-z0-9_.\- ]{0,20}[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        group=1,
        lead="",
    ),
    Rule("google-api-key", ("aiza",), re.compile(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"), anchors=AWS_OR_GOOGLE),
    Rule(
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b"),
        anchors=GITHUB_OR_GITLAB,
    ),
    Rule(
        "gitlab-token",
        ("glpat-",),
        re.compile(r"\bglpat-[A-Za-z0-9_\-]{20}(?![A-Za-z0-9_\-])"),
        anchors=GITHUB_OR_GITLAB,
    ),
    Rule("slack-token", ("xox",), re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"), anchors=("xox",)),
    Rule(
        "slack-webhook",
        ("hooks.slack.com",),
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+"),
        anchors=("://",),  # as in any URL: the lines password-in-url looks at
    ),
    Rule(
        "stripe-key",
        ("_live_", "_test_"),
        re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{16,}\b"),
        anchors=("_live_", "_test_"),
    ),
    Rule(
        "jwt",
        ("eyj",),
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        anchors=("eyJ",),
    ),
    Rule(
        "password-in-url",
        ("://",),
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@\"']+:([^\s/@\"']+)@[^\s/\"']+"),
        group=1,
        anchors=("://",),
    ),
    Rule(
        "assigned-secret",
        ("pass", "secret", "token", "key"),
        re.compile(
            r"(?i)\b[a-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[a-z0-9_.-]*[\"']?\s*[:=]\s*"
            r"[\"']?([^\s\"'#,;{}<>$]{8,})"
        ),
        group=1,
        config_only=True,
        lead="abcdefghijklmnopqrstuvwxyz0123456789_.-",
    ),
)

#: Values that name a placeholder or a template variable rather than hold a secret.
PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|changeme|change_me|your[_-].*|example.*|dummy.*|null|none|true|false|redacted.*"
    r"|\$\{?\w+\}?|\{[^}]*\}|<[^>]*>|%\(\w+\)s)$"
)


@attrs.frozen
class Finding:
    path: str
    line: int
    rule: str


def placeholder(rule: str, value: str) -> str:
    return f"[REDACTED:{rule}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}]"


def matches(path: str, text: str) -> Iterator[tuple[int, int, int, str]]:
    """(start, rule's rank, end, rule) of every match: at one position the more specific rule wins.

    Each rule's pattern runs only where a match can be (see `Rule`), and finds there what running it
    over the whole text would.
    """
    config_like = CONFIG_LIKE.search(path) is not None
    lines: dict[tuple[str, ...], list[tuple[int, int]]] = {}  # by anchors: rules that share them share the search
    lowered = text.lower()
    ascii_text = text.isascii()  # then `lowered` is `text` letter for letter, and so is `(?i)`
    for rank, rule in enumerate(RULES):
        if rule.config_only and not config_like:
            continue
        if rule.anchors:
            if rule.anchors not in lines:
                lines[rule.anchors] = _lines_holding(text, rule.anchor)
            found: Iterable[re.Match[str]] = (
                match for start, end in lines[rule.anchors] for match in rule.pattern.finditer(text, start, end)
            )
        elif rule.lead is not None and ascii_text:
            found = _matches_at(rule.pattern, text, _starts(lowered, rule.hints, rule.lead))
        elif any(hint in lowered for hint in rule.hints):
            found = rule.pattern.finditer(text)
        else:
            continue
        for match in found:
            value = match.group(rule.group)
            if value and not (rule.group and PLACEHOLDER.match(value)):
                yield match.start(rule.group), rank, match.end(rule.group), rule.name


def _lines_holding(text: str, anchor: re.Pattern[str]) -> list[tuple[int, int]]:
    """(start, end) of every line of `text` that holds a match of `anchor`, in order, each once.

    Scanning from a line's start sees the same word boundary as scanning the whole text (`re`
    looks at the character before `pos`), and a match that cannot span a line break ends by its end.
    """
    spans = []
    found = anchor.search(text)
    while found is not None:
        start = text.rfind("\n", 0, found.start()) + 1
        end = text.find("\n", found.start())
        end = len(text) if end == -1 else end
        spans.append((start, end))
        found = anchor.search(text, end)
    return spans


def _starts(lowered: str, hints: tuple[str, ...], lead: str) -> list[int]:
    """Every position from which a match could start: each hint, and the run of `lead` characters
    just before it. In order, each once."""
    starts: set[int] = set()
    for hint in hints:
        found = lowered.find(hint)
        while found != -1:
            start = found
            while start > 0 and lowered[start - 1] in lead:
                start -= 1
            starts.update(range(start, found + 1))
            found = lowered.find(hint, found + 1)
    return sorted(starts)


def _matches_at(pattern: re.Pattern[str], text: str, starts: list[int]) -> Iterator[re.Match[str]]:
    """What `pattern.finditer(text)` finds, when no match can start anywhere but at `starts`."""
    end = 0
    for start in starts:
        if start < end:
            continue  # inside the previous match: finditer goes on from its end
        match = pattern.match(text, start)
        if match is not None:
            yield match
            end = max(match.end(), start + 1)


def redact(path: str, text: str) -> tuple[str, list[Finding]]:
    """`text` with every secret replaced, and where each one was (of overlapping matches, the first)."""
    spans: list[tuple[int, int, str]] = []
    for start, _, end, rule in sorted(matches(path, text)):
        if spans and start < spans[-1][1]:
            continue  # overlaps a secret already claimed
        spans.append((start, end, rule))
    if not spans:
        return text, []
    parts, findings, position = [], [], 0
    for start, end, rule in spans:
        parts += [text[position:start], placeholder(rule, text[start:end])]
        findings.append(Finding(path, text.count("\n", 0, start) + 1, rule))
        position = end
    parts.append(text[position:])
    return "".join(parts), findings
