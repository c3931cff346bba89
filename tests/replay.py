"""`make bench-replay`: replay real history through the proxy and count what a prefix cache recomputes.

    python -m tests.replay REPOSITORY [--commits 30]
    python -m tests.replay --pypi hypothesis [--until 6.170.17] [--commits 30] [--history 30]

For each of the last N commits of a repository (or of a history made from consecutive wheel
releases of a PyPI package, one release per commit, without the packaging metadata), the commit's
changes are applied to a scratch clone as uncommitted edits, file by file (at most `--steps` edits
per commit: larger commits are applied in that many groups), with a question asked through the
real proxy after each edit; then the commit is made. The clone starts at the commit before the
first replayed one, with all the history before it, as a developer's repository would (the first
file order is derived from that history). Three designs are compared on the same questions:

  original   the snapshot rebuilt at every commit, commit id first, files in path order, then the
             diff against HEAD (rendered with this project's own renderer, rearranged that way);
  ours       the real proxy, `rebase = auto`: what the upstream received, warm-ups included;
  lower      only the bytes that are new since the previous request: the whole first prompt (a
             cold start for every design), then each edit's added lines and the question.

Totals are given with and without the first request (the cold start every design pays alike).

Cache model: an ideal prefix cache over the prompts' text (message contents joined), with an
approximate tokenizer of 4 bytes per token and 16-token blocks (64 bytes, as vLLM's block hashing);
a prompt reuses its longest block-aligned common prefix with any of the last 8 prompts sent, and
every other token is recomputed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pygit2
from aiohttp import web
from pygit2.enums import ResetMode

from scout_diff_cache.app import make_app
from scout_diff_cache.config import load_config
from scout_diff_cache.diff import working_diff
from scout_diff_cache.epoch import Epoch
from scout_diff_cache.repository import ContentRules, open_repository
from scout_diff_cache.snapshot import build_snapshot

BYTES_PER_TOKEN = 4
BLOCK = 16 * BYTES_PER_TOKEN
REMEMBERED = 8
VERBOSE = False
QUESTION = "What does the change I am making do, and is anything broken by it?"
START = 1_700_000_000


class PrefixCache:
    """Counts recomputed tokens for a sequence of prompts under the cache model above."""

    def __init__(self) -> None:
        self.recent: list[bytes] = []
        self.recomputed = 0
        self.cold = 0
        self.total = 0

    def send(self, prompt: bytes) -> None:
        reused = max((_common_prefix(prompt, seen) for seen in self.recent), default=0) // BLOCK * BLOCK
        self.recomputed += (len(prompt) - reused) // BYTES_PER_TOKEN
        self.cold = self.cold or self.recomputed  # the first prompt: a cold start for every design
        self.total += len(prompt) // BYTES_PER_TOKEN
        self.recent = [prompt, *self.recent[: REMEMBERED - 1]]


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix: galloping over equal chunks, so each byte is compared about once."""
    low, end, step = 0, min(len(a), len(b)), BLOCK
    while low < end:
        step = min(step, end - low)
        if a[low : low + step] == b[low : low + step]:
            low += step
            step *= 2
        elif step > 1:
            step //= 2
        else:
            break
    return low


def prompt_text(body: dict[str, Any]) -> bytes:
    return "\n".join(message["content"] for message in body["messages"]).encode()


@attrs.define
class Recorder:
    """The upstream: records every prompt in arrival order, answers a tiny completion."""

    prompts: list[bytes] = attrs.Factory(list)
    snapshot_bytes: int = 0  # the first prompt's snapshot message

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(prompt_text(body))
        self.snapshot_bytes = self.snapshot_bytes or len(body["messages"][0]["content"].encode())
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})


def history_from_pypi(package: str, releases: int, until: str | None, workdir: Path) -> Path:
    """A git repository with one commit per wheel release up to `until` (a pure-Python wheel is its source)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", package], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"Available versions: (.*)", listing)
    if found is None:
        raise SystemExit(f"pip index versions {package} listed no versions")
    versions = [v for v in found[1].split(", ") if re.fullmatch(r"[\d.]+", v)]  # newest first
    if until is not None:
        if until not in versions:
            raise SystemExit(f"{package} has no release {until}")
        versions = versions[versions.index(until) :]
    wheels, found_wheels = workdir / "wheels", []
    for version in versions[:releases]:  # newest first, back to the first release without a wheel
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
             "-d", str(wheels), f"{package}=={version}"],
            stderr=subprocess.DEVNULL,
        )
        if download.returncode != 0:
            break
        (wheel,) = [w for w in wheels.glob(f"*-{version}-*.whl") if w.name.lower().startswith(package.lower() + "-")]
        found_wheels.append((version, wheel))
    if len(found_wheels) < 2:
        raise SystemExit(f"{package}: fewer than two releases with a wheel")
    repo_path = workdir / f"{package}-releases"
    repo = pygit2.init_repository(str(repo_path), initial_head="main")
    for version, wheel in reversed(found_wheels):
        for old in list(repo_path.iterdir()):
            if old.name != ".git":
                subprocess.run(["rm", "-rf", str(old)], check=True)
        with zipfile.ZipFile(wheel) as archive:
            # The packaging metadata is renamed at every release and no source repository holds it.
            archive.extractall(repo_path, [n for n in archive.namelist() if ".dist-info/" not in n])
        _commit_all(repo, f"{package} {version}")
    print(f"made a history of {len(found_wheels)} releases of {package}: {found_wheels[-1][0]} .. {found_wheels[0][0]}")
    return repo_path


def _commit_all(repo: pygit2.Repository, message: str) -> str:
    index = repo.index
    index.add_all()
    for entry in list(index):
        if not (Path(repo.workdir) / entry.path).exists():
            index.remove(entry.path)
    index.write()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    when = START if repo.head_is_unborn else repo[repo.head.target].commit_time + 3600  # an hour apart
    author = pygit2.Signature("replay", "replay@example.com", when, 0)
    return str(repo.create_commit("HEAD", author, author, message, index.write_tree(), parents))


def _added_bytes(old: bytes, new: bytes) -> int:
    patch = pygit2.Patch.create_from(old, new)
    return sum(len(line.content) for hunk in patch.hunks for line in hunk.lines if line.origin == "+")


@functools.lru_cache(maxsize=1)
def original_snapshot(workdir: Path, commit: str, rules: Any, cap: int) -> str:
    """The original design's snapshot: commit id first, files in path order."""
    repo = open_repository(workdir)
    paths = tuple(sorted(_paths(repo, repo[commit].peel(pygit2.Tree))))
    snapshot = build_snapshot(workdir, commit, rules, cap, Epoch(commit, paths))
    return f"Commit {commit}\n" + json.loads(snapshot.message)["content"]


def original_prompt(workdir: Path, rules: Any, cap: int) -> bytes:
    """The original design's prompt: its snapshot of HEAD, then the diff against HEAD."""
    repo = open_repository(workdir)
    head = repo.head.peel(pygit2.Commit)
    diff = working_diff(repo, head, head, rules, [])
    snapshot = original_snapshot(workdir, str(head.id), rules, cap)
    return "\n".join([snapshot, json.loads(diff.message)["content"], QUESTION]).encode()


def _paths(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = "") -> list[str]:
    found = []
    for entry in tree:
        if entry.type_str == "tree":
            found += _paths(repo, repo[entry.id], f"{prefix}{entry.name}/")
        else:
            found.append(prefix + entry.name)
    return found


async def replay(source: Path, commits: int, steps: int, workdir: Path, context: list[str]) -> None:
    history = pygit2.Repository(str(source))
    chain = []
    walker = history.walk(history.head.target)
    walker.simplify_first_parent()
    for commit in walker:
        chain.append(commit)
        if len(chain) > commits:
            break
    chain.reverse()
    scratch_path = workdir / "replay"
    scratch = pygit2.clone_repository(str(source), str(scratch_path))  # the history up to the window, too
    scratch.remotes.delete("origin")
    scratch.reset(chain[0].id, ResetMode.HARD)

    recorder = Recorder()
    upstream = web.Application(client_max_size=2**31)
    upstream.router.add_post("/v1/chat/completions", recorder.handle)
    upstream_runner = web.AppRunner(upstream)
    await upstream_runner.setup()
    upstream_site = web.TCPSite(upstream_runner, "127.0.0.1", 0)
    await upstream_site.start()
    upstream_port = upstream_runner.addresses[0][1]
    config_path = workdir / "replay.ini"
    config_path.write_text(
        f"[server]\nlog_level = warning\n[upstream]\nurl = http://127.0.0.1:{upstream_port}/v1\n"
        f"[repository]\npath = {scratch_path}\nmax_snapshot_bytes = 1GiB\n[context]\nstate_dir = {workdir / 'state'}\n"
        + "".join(f"{setting.replace('=', ' = ', 1)}\n" for setting in context)
    )
    config = load_config(config_path)
    proxy_runner = web.AppRunner(make_app(config))
    await proxy_runner.setup()
    proxy_site = web.TCPSite(proxy_runner, "127.0.0.1", 0)
    await proxy_site.start()
    proxy_url = f"http://127.0.0.1:{proxy_runner.addresses[0][1]}/v1/chat/completions"

    rules = ContentRules.from_config(config)
    original, ours, lower = PrefixCache(), PrefixCache(), 0
    questions = 0
    try:
        async with aiohttp.ClientSession() as session:
            for previous, commit in zip(chain, chain[1:]):
                deltas = list(previous.tree.diff_to_tree(commit.tree).deltas)
                size = max(1, -(-len(deltas) // steps))
                for start in range(0, len(deltas), size):
                    for delta in deltas[start : start + size]:
                        lower += _apply(history, delta, scratch_path) // BYTES_PER_TOKEN
                    async with session.post(proxy_url, json={"messages": [{"role": "user", "content": QUESTION}]}) as response:
                        assert response.status == 200, await response.text()
                    questions += 1
                    lower += len(QUESTION) // BYTES_PER_TOKEN
                    original.send(original_prompt(scratch_path, rules, config.repository.max_snapshot_bytes))
                _commit_all(scratch, commit.message)
            await asyncio.sleep(0.5)  # let a last background warm-up arrive
            async with session.get(proxy_url.replace("/v1/chat/completions", "/health")) as response:
                epochs = (await response.json())["snapshot"]
    finally:
        await proxy_runner.cleanup()
        await upstream_runner.cleanup()
    cold = len(recorder.prompts[0]) // BYTES_PER_TOKEN  # the first prompt, cold for every design
    for prompt in recorder.prompts:
        before = ours.recomputed
        ours.send(prompt)
        if VERBOSE:
            print(f"ours: {len(prompt):>9} bytes, recomputed {ours.recomputed - before:>7} tokens")
    print(f"replayed {len(chain) - 1} commits of {source.name}: {questions} questions "
          f"({len(recorder.prompts) - questions} warm-ups), first snapshot {recorder.snapshot_bytes / 1e6:.2f} MB; "
          f"ours rebased {epochs['rebases']} times, folded {epochs['folds']} times")
    print(f"{'design':48}{'recomputed tokens':>18}{'vs original':>13}{'after the cold start':>22}{'vs original':>13}")
    rows = (
        ("original (every commit, id first, path order)", original.recomputed, original.recomputed - original.cold),
        ("ours (epochs, stable order, warm-ups)", ours.recomputed, ours.recomputed - ours.cold),
        ("lower bound (only new bytes)", lower + cold, lower),
    )
    for label, total, steady in rows:
        print(f"{label:48}{total:>18,}{total / max(rows[0][1], 1):>13.1%}{steady:>22,}{steady / max(rows[0][2], 1):>13.1%}")
    print(f"ours / lower bound: {rows[1][1] / max(rows[2][1], 1):.2f}x, after the cold start "
          f"{rows[1][2] / max(rows[2][2], 1):.2f}x; prompt tokens sent: original {original.total:,}, ours {ours.total:,}")


def _apply(history: pygit2.Repository, delta: pygit2.DiffDelta, root: Path) -> int:
    """Make one file as the commit has it; return the bytes its added lines bring."""
    old_path, new_path = root / delta.old_file.path, root / delta.new_file.path
    old = history[delta.old_file.id].data if delta.old_file.id != pygit2.Oid(hex="0" * 40) else b""
    if delta.status == pygit2.enums.DeltaStatus.DELETED:
        old_path.unlink(missing_ok=True)
        return 0
    new = history[delta.new_file.id].data
    if old_path != new_path:
        old_path.unlink(missing_ok=True)
    new_path.parent.mkdir(parents=True, exist_ok=True)
    new_path.write_bytes(new)
    return _added_bytes(old, new)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", type=Path, help="a git repository whose history to replay")
    parser.add_argument("--pypi", metavar="PACKAGE", help="replay consecutive wheel releases of this package instead")
    parser.add_argument("--commits", type=int, default=30, help="commits to replay (default 30)")
    parser.add_argument("--steps", type=int, default=12, help="most edits (questions) per commit (default 12)")
    parser.add_argument("--until", metavar="VERSION", help="with --pypi: the last release replayed (default: the newest)")
    parser.add_argument("--history", type=int, default=30,
                        help="with --pypi: earlier releases committed first, the history the replay starts from (default 30)")
    parser.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                        help="a [context] setting for the proxy, e.g. rebase_diff_share=0.05 (repeatable)")
    args = parser.parse_args()
    if (args.repository is None) == (args.pypi is None):
        parser.error("name a REPOSITORY or --pypi PACKAGE")
    with tempfile.TemporaryDirectory(prefix="scout-replay-") as scratch:
        workdir = Path(scratch)
        source = args.repository or history_from_pypi(args.pypi, args.history + args.commits + 1, args.until, workdir)
        asyncio.run(replay(source.resolve(), args.commits, args.steps, workdir, args.context))


if __name__ == "__main__":
    main()
