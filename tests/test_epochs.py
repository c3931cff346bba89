"""Snapshot epochs: the base survives commits and restarts, rebases keep the prefix, warm-ups."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pygit2
from aiohttp import web
from aiohttp.test_utils import TestClient

from support import (
    SIGNATURE,
    FakeUpstream,
    GitRepo,
    ProxyFactory,
    completion,
    five_files,
    headed_paths,
    injected,
    is_warmup,
    until,
    until_async,
)


def questions(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [seen.json for seen in upstream.seen if not is_warmup(seen.json)]


def warmups(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [seen.json for seen in upstream.seen if is_warmup(seen.json)]


def file_order(snapshot: str) -> list[str]:
    return headed_paths(snapshot)


async def test_auto_rebase_warms_the_new_snapshot_before_switching(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        if is_warmup(await request.json()):
            await asyncio.wait_for(fake.release.wait(), 5)
        return web.json_response(completion())

    upstream.behaviour = behaviour
    client = await make_proxy(context={"rebase_min_diff_bytes": "200", "rebase_diff_share": "0.01"})
    old_snapshot, _ = await injected(client, upstream)
    old_base = git_repo.head()
    git_repo.write("src/app.py", "def main():\n    return 'a change big enough to rebase for'\n" * 5)
    new_base = git_repo.commit("grow the diff")

    snapshot, diff = await injected(client, upstream)  # sees the big diff, starts the rebase
    assert snapshot == old_snapshot and "a change big enough" in diff
    await until(lambda: len(warmups(upstream)) == 1)
    warm = warmups(upstream)[0]
    assert warm["messages"][0]["content"].endswith(f"commit {new_base} ===\n")
    assert "No changes" in warm["messages"][1]["content"]

    snapshot, _ = await injected(client, upstream)  # the warm-up is still running: old epoch
    assert snapshot == old_snapshot and old_base in snapshot

    upstream.release.set()
    for _ in range(100):
        snapshot, diff = await injected(client, upstream)
        if new_base in snapshot:
            break
        await asyncio.sleep(0.02)
    assert snapshot.endswith(f"commit {new_base} ===\n") and "No changes" in diff
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["rebases"] == 1
    assert health["last_rebase"]["previous"] == old_base and health["last_rebase"]["base"] == new_base
    assert health["last_rebase"]["warmup"]["cached_tokens"] == 90


async def test_a_failed_warm_up_does_not_block_the_switch(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        if is_warmup(await request.json()):
            return web.json_response({"error": {"message": "warm-up refused"}}, status=500)
        return web.json_response(completion())

    upstream.behaviour = behaviour
    client = await make_proxy(context={"rebase_min_diff_bytes": "200", "rebase_diff_share": "0.01"})
    await injected(client, upstream)
    git_repo.write("src/app.py", "x = 'a large enough change to outgrow the limits'\n" * 10)
    new_base = git_repo.commit("grow")
    await injected(client, upstream)
    for _ in range(100):
        snapshot, _ = await injected(client, upstream)
        if new_base in snapshot:
            break
        await asyncio.sleep(0.02)
    assert snapshot.endswith(f"commit {new_base} ===\n")
    assert (await (await client.get("/health")).json())["last_rebase"]["warmup"] is None


FOLD_BUDGET = {"rebase_min_diff_bytes": "4300", "rebase_diff_share": "0.01"}


async def commit_versions(client: TestClient, upstream: FakeUpstream, repo: GitRepo) -> list[tuple[str, str]]:
    """Rewrite src/app.py ten times, a commit and a question each time: (snapshot, diff) of each."""
    seen = []
    for number in range(10):
        repo.write("src/app.py", "".join(f"line {i} of version {number}\n" for i in range(12)))
        repo.commit(f"version {number}")
        seen.append(await injected(client, upstream))
    return seen


async def test_a_diff_of_the_same_file_changed_again_and_again_is_folded_not_rebased(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("src/zz_big.py", "STABLE = True\n" * 2000)  # after src/app.py: a rebase would re-read it
    git_repo.commit("a big file late in the order")
    client = await make_proxy(context=FOLD_BUDGET)
    first, _ = await injected(client, upstream)
    versions = await commit_versions(client, upstream, git_repo)
    assert all(snapshot == first for snapshot, _ in versions)
    diffs = [diff for _, diff in versions]
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["folds"] == 1 and health["snapshot"]["rebases"] == 0 and warmups(upstream) == []
    folded_at = next(n for n, diff in enumerate(diffs) if "commits up to" in diff)
    assert folded_at < len(diffs) - 1  # commits followed the fold: a new fold would differ
    assert 2 * len(diffs[folded_at]) < len(diffs[folded_at - 1])  # the log would outgrow 4300; the net is small
    assert "+line 0 of version 9" in diffs[-1] and f"version {folded_at - 1}" not in diffs[-1]
    label = f"=== the changes above were made in {folded_at + 1} commits up to "
    cut = diffs[folded_at].index(label)
    assert all(later[:cut] == diffs[folded_at][:cut] for later in diffs[folded_at:])  # later commits append
    await client.close()

    restarted = await make_proxy(context=FOLD_BUDGET)
    snapshot, diff = await injected(restarted, upstream)
    assert snapshot == first and diff == diffs[-1]  # the fold point survives a restart


async def test_a_rebase_is_chosen_over_a_fold_when_it_rereads_less(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context=FOLD_BUDGET)
    await injected(client, upstream)  # src/app.py is near the end of a small snapshot
    await commit_versions(client, upstream, git_repo)
    await until(lambda: len(warmups(upstream)) == 1)
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["folds"] == 0


async def test_past_200_commits_the_oldest_are_folded_200_at_a_time(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual"})
    await injected(client, upstream)
    commits = []
    for number in range(201):
        git_repo.write(f"notes/{number % 7}.txt", f"note {number}\n")
        commits.append(git_repo.commit(f"note {number}"))
    _, diff = await injected(client, upstream)
    label = f"=== the changes above were made in 200 commits up to {commits[199]} ===\n"
    assert label in diff and diff.count("were committed as") == 1
    git_repo.write("notes/0.txt", "one more\n")
    git_repo.commit("one more")
    _, later = await injected(client, upstream)
    cut = diff.index(label) + len(label)
    assert later[:cut] == diff[:cut] and later.count("were committed as") == 2  # the fold point stays


async def test_a_small_diff_keeps_the_epoch_across_several_commits(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    base = git_repo.head()
    first, _ = await injected(client, upstream)
    for number in range(3):
        git_repo.write(f"src/mod{number}.py", f"VALUE = {number}\n")
        git_repo.commit(f"commit {number}")
        snapshot, diff = await injected(client, upstream)
        assert snapshot == first
        assert f"+VALUE = {number}" in diff
    assert diff.endswith(f"=== snapshot commit {base}; HEAD is {git_repo.head()} ===\n")
    assert warmups(upstream) == []


async def test_a_rebase_keeps_every_file_before_the_first_changed_one(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    five_files(git_repo)
    client = await make_proxy(context={"rebase": "manual"})
    before, _ = await injected(client, upstream)
    order = file_order(before)
    earlier, last = order[-1], order[-3]
    assert earlier > last  # so that path order would put them the other way round
    git_repo.write(earlier, "changed\n")
    git_repo.commit("change the last file in the order")
    git_repo.write(last, "changed\n")
    git_repo.commit("then one before it")
    response = await client.post("/admin/rebase")
    assert response.status == 200
    after, _ = await injected(client, upstream)
    cut = before.index(f"=== file: {last} [")
    assert after[:cut] == before[:cut]
    # the changed files move to the end, the one changed last at the very end
    assert file_order(after) == [path for path in order if path not in (earlier, last)] + [earlier, last]


async def test_manual_mode_rebases_only_when_asked(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual", "rebase_min_diff_bytes": "1", "rebase_diff_share": "0.0001"})
    old_base = git_repo.head()
    first, _ = await injected(client, upstream)
    git_repo.write("src/app.py", "big change\n" * 100)
    new_base = git_repo.commit("big")
    for _ in range(3):
        snapshot, _ = await injected(client, upstream)
        assert snapshot == first
    response = await client.post("/admin/rebase")
    done = await response.json()
    assert (done["previous"], done["base"]) == (old_base, new_base)
    assert done["warmup"] == {"prompt_tokens": 100, "cached_tokens": 90, "processed_tokens": None}
    snapshot, _ = await injected(client, upstream)
    assert snapshot.endswith(f"commit {new_base} ===\n")
    again = await (await client.post("/admin/rebase")).json()
    assert again["previous"] == again["base"] == new_base and again["warmup"] is None


def amend_head(git_repo: GitRepo, text: str) -> str:
    """Replace HEAD by a commit with the same parent and `text` in src/app.py (what --amend does)."""
    repo = git_repo.repo
    old = repo[git_repo.head()].peel(pygit2.Commit)
    git_repo.write("src/app.py", text)
    repo.index.add_all()
    repo.index.write()
    rewritten = repo.create_commit(
        None, SIGNATURE, SIGNATURE, "amended", repo.index.write_tree(), [parent.id for parent in old.parents]
    )
    repo.head.set_target(rewritten)
    return str(rewritten)


async def test_a_base_that_is_no_longer_an_ancestor_keeps_serving_with_its_net_change(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("src/app.py", "before the amend\n")
    old_base = git_repo.commit("to be amended")
    client = await make_proxy()
    first, _ = await injected(client, upstream)
    amended = amend_head(git_repo, "rewritten history\n")
    snapshot, diff = await injected(client, upstream)
    assert snapshot == first  # no build, no re-prefill: the net change is small
    assert f"=== the changes above were made since {old_base} on another line of history ===" in diff
    assert "-before the amend\n+rewritten history\n" in diff
    assert diff.endswith(f"=== snapshot commit {old_base}; HEAD is {amended} ===\n")
    git_repo.write("src/util.py", "def add(a, b):\n    return a + b + 0\n")
    later = git_repo.commit("after the amend")
    _, after = await injected(client, upstream)
    label = "on another line of history ===\n"
    assert after[: after.index(label)] == diff[: diff.index(label)]  # the net group stays; the commit follows
    assert f"were committed as {later}: after the amend" in after
    assert (await (await client.get("/health")).json())["snapshot"]["rebases"] == 0


async def test_a_base_gone_from_the_repository_is_replaced_at_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    git_repo.write("src/app.py", "soon unreachable\n")
    old_base = git_repo.commit("to be amended and collected")
    client = await make_proxy(context={"rebase": "manual"})
    await injected(client, upstream)
    amended = amend_head(git_repo, "rewritten history\n")
    (git_repo.path / ".git" / "objects" / old_base[:2] / old_base[2:]).unlink()  # what gc does to it
    snapshot, diff = await injected(client, upstream)
    assert snapshot.endswith(f"commit {amended} ===\n")
    assert "No changes" in diff


async def test_the_base_and_order_survive_a_restart(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    five_files(git_repo)
    first = await make_proxy(context={"rebase": "manual"})
    await injected(first, upstream)  # the first epoch is at the five files
    git_repo.write("c.txt", "changed\n")
    git_repo.commit("change c")
    await first.post("/admin/rebase")
    rebased, _ = await injected(first, upstream)
    git_repo.write("a.txt", "committed after the rebase\n")
    git_repo.commit("change a")
    await first.close()

    second = await make_proxy(context={"rebase": "manual"})
    restarted, diff = await injected(second, upstream)
    assert restarted == rebased  # same base, same order: the upstream's cache still matches
    assert "+committed after the rebase" in diff
    assert file_order(restarted)[-1] == "c.txt"


async def test_a_restart_takes_the_repository_name_from_the_state_file(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, tmp_path: Path
) -> None:
    """The name comes from a walk to the first commit; after a restart the saved one is taken instead."""
    first = await make_proxy()
    snapshot, _ = await injected(first, upstream)
    await first.close()
    (saved,) = (tmp_path / "state").glob("epoch-*.json")
    data = json.loads(saved.read_text())
    assert f"Repository {data['key']}." in snapshot and data["key"].startswith("scout-")
    saved.write_text(json.dumps({**data, "key": "scout-from-the-state"}))  # a name no walk would give
    git_repo.write("a.txt", "committed after the restart\n")
    git_repo.commit("change a")
    second = await make_proxy(context={"rebase": "auto"})
    await injected(second, upstream)
    await second.post("/admin/rebase")
    rebased, _ = await injected(second, upstream)
    assert rebased.endswith(f"commit {git_repo.head()} ===\n")
    assert "Repository scout-from-the-state." in rebased
    assert upstream.seen[-1].headers.get("X-Session-ID") == "scout-from-the-state"  # routers get the same name


async def test_an_unusable_state_file_means_a_fresh_epoch(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    first = await make_proxy()
    await injected(first, upstream)
    await first.close()
    (saved,) = state.glob("epoch-*.json")
    data = json.loads(saved.read_text())
    assert data["base"] == git_repo.head()
    saved.write_text(json.dumps({**data, "base": "0" * 40}))
    second = await make_proxy()
    snapshot, _ = await injected(second, upstream)
    assert snapshot.endswith(f"commit {git_repo.head()} ===\n")
    saved.write_text("{not json")
    third = await make_proxy()
    snapshot, _ = await injected(third, upstream)
    assert snapshot.endswith(f"commit {git_repo.head()} ===\n")


async def test_keepalive_pings_resend_the_prefix_while_requests_arrive(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    client = await make_proxy(context={"keepalive_interval": "200ms"})
    await injected(client, upstream)
    await until(lambda: len(warmups(upstream)) >= 1)
    ping = warmups(upstream)[0]
    assert ping["messages"][0] == questions(upstream)[0]["messages"][0]
    await asyncio.sleep(1.0)  # no more requests: pings stop after one interval
    settled = len(warmups(upstream))
    await asyncio.sleep(0.6)
    assert len(warmups(upstream)) == settled <= 3


def checkout_branch(git_repo: GitRepo, name: str) -> None:
    repo = git_repo.repo
    repo.checkout(repo.branches.local[name], strategy=pygit2.enums.CheckoutStrategy.FORCE)


async def test_switching_back_to_a_branch_reuses_its_remembered_snapshot(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    main = git_repo.head()
    git_repo.repo.branches.local.create("main-copy", git_repo.repo[main].peel(pygit2.Commit))
    client = await make_proxy(context={"rebase_min_diff_bytes": "200", "rebase_diff_share": "0.01"})
    first, _ = await injected(client, upstream)
    git_repo.write("src/feature.py", "FEATURE = 'a large enough change to outgrow the budget'\n" * 10)
    feature = git_repo.commit("feature work")  # on main; main-copy stays at the first epoch's commit
    await injected(client, upstream)  # outgrown: rebased to the feature in the background
    await until_async(lambda: health_of(client), feature)
    checkout_branch(git_repo, "main-copy")
    await injected(client, upstream)  # the feature's snapshot outgrown again: back to the remembered one
    await until_async(lambda: health_of(client), main)
    snapshot, diff = await injected(client, upstream)
    assert snapshot == first and "No changes" in diff
    health = await (await client.get("/health")).json()
    assert health["snapshot"]["builds"] == 2 and health["snapshot"]["rebases"] == 2  # no third build


async def health_of(client: TestClient) -> str | None:
    return (await (await client.get("/health")).json())["snapshot"]["commit"]


async def test_a_merge_of_the_branch_shown_keeps_its_groups(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual"})
    base = git_repo.head()
    await injected(client, upstream)
    for name in ("one", "two"):
        git_repo.write(f"src/{name}.py", f"NAME = '{name}'\n")
        git_repo.commit(f"feature {name}")
    _, shown = await injected(client, upstream)
    repo = git_repo.repo
    tip = repo.head.target
    merge = repo.create_commit(
        None, SIGNATURE, SIGNATURE, "merge the feature", repo[tip].tree.id, [pygit2.Oid(hex=base), tip]
    )
    repo.head.set_target(merge)  # main, which stayed at the base, merged the feature --no-ff
    _, merged = await injected(client, upstream)
    footer = shown.rindex("=== snapshot commit")
    assert merged[:footer] == shown[:footer]  # the merge changed nothing in the work tree: nothing re-read
    assert merged.endswith(f"HEAD is {merge} ===\n")


async def test_a_background_rebase_ends_with_the_app(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    warming = asyncio.Event()

    async def behaviour(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        if is_warmup(await request.json()):
            warming.set()
            await asyncio.sleep(3600)  # a warm-up that never ends: the rebase is still running
        return web.json_response(completion())

    upstream.behaviour = behaviour
    client = await make_proxy(context={"rebase_min_diff_bytes": "200", "rebase_diff_share": "0.01"})
    await injected(client, upstream)
    git_repo.write("src/app.py", "x = 'a large enough change to outgrow the limits'\n" * 10)
    git_repo.commit("grow")
    await injected(client, upstream)  # outgrown: the rebase starts in the background
    await asyncio.wait_for(warming.wait(), 10)
    await client.close()
    switches = [task for task in asyncio.all_tasks() if "_switch" in repr(task.get_coro())]
    assert switches == []  # cancelled and awaited at cleanup, not left behind


async def test_every_commit_mode_moves_the_snapshot_on_each_commit(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "every-commit"})
    before, _ = await injected(client, upstream)
    git_repo.write("src/app.py", "def main():\n    return 'committed'\n")
    commit = git_repo.commit("edit app")
    after, diff = await injected(client, upstream)
    assert after != before
    assert after.endswith(f"commit {commit} ===\n") and "return 'committed'" in after
    assert "No changes" in diff
