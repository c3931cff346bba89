"""Which commits the diff shows one by one, as HEAD moves: extended, cut, or found afresh."""

from __future__ import annotations

import pygit2

from scout_diff_cache.git.lineage import COMMIT_GROUPS, Lineage, trace

from support import SIGNATURE, GitRepo


def commit_on(repo: GitRepo, parents: list[str], name: str) -> str:
    """A commit that writes `name` on top of the first parent's tree, HEAD left alone."""
    git = repo.repo
    tree = git[parents[0]].peel(pygit2.Commit).tree
    builder = git.TreeBuilder(tree)
    builder.insert(name, git.create_blob(name.encode()), pygit2.GIT_FILEMODE_BLOB)
    return str(
        git.create_commit(None, SIGNATURE, SIGNATURE, name, builder.write(), [pygit2.Oid(hex=p) for p in parents])
    )


def traced(repo: GitRepo, base: str, head: str, previous: Lineage | None = None, anchor: str | None = None) -> Lineage:
    git = repo.repo
    return trace(git, git[base].peel(pygit2.Commit), git[head].peel(pygit2.Commit), previous, anchor)


def test_commits_on_the_first_parent_line_are_steps(git_repo: GitRepo) -> None:
    base = git_repo.head()
    one = commit_on(git_repo, [base], "one")
    two = commit_on(git_repo, [one], "two")
    assert traced(git_repo, base, two) == Lineage(base, base, 0, ((base, one), (one, two)))


def test_a_merge_of_the_branch_shown_is_one_more_step_from_its_tip(git_repo: GitRepo) -> None:
    base = git_repo.head()
    feature = commit_on(git_repo, [commit_on(git_repo, [base], "f1")], "f2")
    shown = traced(git_repo, base, feature)
    merge = commit_on(git_repo, [base, feature], "merge")  # main's first parent is the base
    merged = traced(git_repo, base, merge, shown)
    assert merged.steps == (*shown.steps, (feature, merge))
    assert traced(git_repo, base, merge).steps == ((base, merge),)  # afresh: the first-parent line


def test_a_reset_back_cuts_the_steps(git_repo: GitRepo) -> None:
    base = git_repo.head()
    one = commit_on(git_repo, [base], "one")
    shown = traced(git_repo, base, commit_on(git_repo, [one], "two"))
    assert traced(git_repo, base, one, shown).steps == ((base, one),)
    assert traced(git_repo, base, base, shown).steps == ()


def test_a_head_on_another_line_anchors_the_net_change_and_steps_follow(git_repo: GitRepo) -> None:
    base = git_repo.head()
    parent = git_repo.repo[base].peel(pygit2.Commit).parents  # the fixture's single commit has none
    assert not parent
    other = str(
        git_repo.repo.create_commit(
            None, SIGNATURE, SIGNATURE, "unrelated root", git_repo.repo[base].peel(pygit2.Commit).tree.id, []
        )
    )
    jumped = traced(git_repo, base, other)
    assert jumped == Lineage(base, other, None, ())
    later = commit_on(git_repo, [other], "later")
    assert traced(git_repo, base, later, jumped, anchor=other) == Lineage(base, other, None, ((other, later),))
    assert traced(git_repo, base, later, None, anchor=other) == Lineage(base, other, None, ((other, later),))


def test_past_the_group_limit_whole_multiples_join_the_net_group(git_repo: GitRepo) -> None:
    base = head = git_repo.head()
    commits = []
    for number in range(COMMIT_GROUPS + 3):
        head = commit_on(git_repo, [head], f"n{number}")
        commits.append(head)
    lineage = traced(git_repo, base, head)
    assert (lineage.anchor, lineage.anchor_commits) == (commits[COMMIT_GROUPS - 1], COMMIT_GROUPS)
    assert len(lineage.steps) == 3
