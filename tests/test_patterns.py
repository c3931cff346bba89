"""Gitignore-style exclude patterns."""

from __future__ import annotations

import pytest

from scout_diff_cache.config import DEFAULT_EXCLUDE
from scout_diff_cache.patterns import PatternError, compile_patterns


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.lock"], "Cargo.lock", True),
        (["*.lock"], "deep/dir/poetry.lock", True),
        (["*.lock"], "lock.py", False),
        (["node_modules/"], "node_modules/dep/index.js", True),
        (["node_modules/"], "web/node_modules/dep/index.js", True),
        (["node_modules/"], "node_modules", False),  # a file of that name is not a directory
        (["/build/"], "build/out.o", True),
        (["/build/"], "src/build/out.o", False),
        (["docs/*.md"], "docs/a.md", True),
        (["docs/*.md"], "docs/sub/a.md", False),
        (["docs/**/*.md"], "docs/sub/deeper/a.md", True),
        (["docs/**/*.md"], "docs/a.md", True),
        (["**/fixtures"], "a/b/fixtures/x.json", True),
        (["generated/**"], "generated/x/y.py", True),
        (["file?.txt"], "file1.txt", True),
        (["file?.txt"], "file12.txt", False),
        (["[ab].txt"], "b.txt", True),
        (["[!ab].txt"], "b.txt", False),
        (["*.log", "!keep.log"], "keep.log", False),
        (["*.log", "!keep.log"], "drop.log", True),
        (["logs/", "!logs/keep.log"], "logs/keep.log", True),  # no re-include below an excluded dir
        (["# comment", ""], "anything", False),
        (["\\#hash"], "#hash", True),
    ],
)
def test_gitignore_semantics(patterns: list[str], path: str, excluded: bool) -> None:
    assert compile_patterns(patterns).excludes(path) is excluded


def test_default_excludes() -> None:
    matcher = compile_patterns(DEFAULT_EXCLUDE)
    for path in ("package-lock.json", "web/dist/app.js", "vendor/x/y.go", "static/app.min.js", "app.js.map", "go.sum"):
        assert matcher.excludes(path), path
    for path in ("src/main.py", "README.md", "distribute.py"):
        assert not matcher.excludes(path), path


def test_a_broken_pattern_is_reported() -> None:
    with pytest.raises(PatternError, match="unclosed"):
        compile_patterns(["[abc"])


def test_a_matcher_asked_many_paths_answers_as_a_fresh_one_for_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Directory verdicts are remembered (and forgotten past a bound): no answer may depend on that."""
    patterns = [*DEFAULT_EXCLUDE, "logs/", "!logs/keep.log", "/build/", "docs/**/*.md", "*.log", "!keep.log"]
    folders = ["", "logs/", "src/", "src/build/", "build/", "docs/a/", "web/node_modules/x/", "vendor/", "a/b/c/"]
    names = ["keep.log", "drop.log", "x.md", "main.py", "app.min.js", "build", "logs"]
    paths = [folder + name for folder in folders for name in names] * 2
    monkeypatch.setattr("scout_diff_cache.patterns.REMEMBERED_DIRECTORIES", 5)
    shared = compile_patterns(patterns)
    answers = [shared.excludes(path) for path in paths]
    assert answers == [compile_patterns(patterns).excludes(path) for path in paths]
    assert any(answers) and not all(answers)
