"""`make bench-replay`: replay real history through the proxy and count what a prefix cache recomputes.

    python -m tests.tools.replay REPOSITORY [--commits 30]
    python -m tests.tools.replay --pypi hypothesis [--until 6.170.17] [--commits 30] [--history 30]
    python -m tests.tools.replay --working-day [--seed 1] [REPOSITORY]

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
  lower      only the bytes no remembered prompt holds: the whole first prompt (a cold start for
             every design), then per step the question and the lines of its work tree that no
             earlier work tree still in the cache holds (see below).

Totals are given with and without the first request (the cold start every design pays alike). After
each answer the replay waits for a rebase the question started, as a developer reading the answer
would.

With `--working-day`, a scripted day of branch work is replayed instead, on a scratch clone of
REPOSITORY or of a repository generated from `--seed` (about 300 text files, 4.5 MB, 50 commits; no
network): a feature branch with edits and commits, a pull of 20 commits onto main (made in another
clone, fetched, merged `--ff-only`), checkouts back and forth, a rebase of the feature onto main,
`commit --amend`, `stash` and `stash pop`, and a `merge --no-ff` of the feature into main, with a
question after every step.

Cache model: an ideal prefix cache over the prompts' text (message contents joined), with an
approximate tokenizer of 4 bytes per token and 16-token blocks (64 bytes, as vLLM's block hashing);
a prompt reuses its longest block-aligned common prefix with any of the last 8 prompts sent, and
every other token is recomputed. The lower bound is a floor for that cache in both modes. Per step
it counts the question and, file by file, the bytes of the work tree's lines that the versions of
the file in the last 8 steps' work trees (the prompts the cache still remembers) do not hold: a line
found n times counts n - m times if m, the most times any remembered version has it, is less (binary
files count nothing); so going back to a tree seen before (a checkout, a rebase, a stash pop) is free.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import operator
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pygit2
from aiohttp import web
from pygit2.enums import ResetMode

from scout_diff_cache.app import make_app
from scout_diff_cache.config import Config, load_config
from scout_diff_cache.git.diff import working_diff
from scout_diff_cache.git.epoch import Epoch
from scout_diff_cache.git.repository import ContentRules, open_repository
from scout_diff_cache.git.snapshot import build_snapshot

BYTES_PER_TOKEN = 4
BLOCK = 16 * BYTES_PER_TOKEN
REMEMBERED = 8
QUESTION = "What does the change I am making do, and is anything broken by it?"
START = 1_700_000_000


class PrefixCache:
    """Counts recomputed tokens for a sequence of prompts under the cache model above."""

    def __init__(self) -> None:
        self.recent: list[bytes] = []
        self.recomputed = 0
        self.cold = 0
        self.total = 0

    def send(self, prompt: bytes) -> int:
        """Tokens this prompt recomputes."""
        reused = max((_common_prefix(prompt, seen) for seen in self.recent), default=0) // BLOCK * BLOCK
        recomputed = (len(prompt) - reused) // BYTES_PER_TOKEN
        self.recomputed += recomputed
        self.cold = self.cold or self.recomputed  # the first prompt: a cold start for every design
        self.total += len(prompt) // BYTES_PER_TOKEN
        self.recent = [prompt, *self.recent[: REMEMBERED - 1]]
        return recomputed


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


def _lines(data: bytes) -> collections.Counter[bytes]:
    """A file's lines as a multiset; none for a binary file (a NUL in its first 8000 bytes, as git decides)."""
    return collections.Counter() if b"\0" in data[:8000] else collections.Counter(data.splitlines(keepends=True))


@attrs.define
class Floor:
    """The lower bound's memory: the work trees the last REMEMBERED steps' prompts were built from, newest first."""

    remembered: list[dict[str, bytes]] = attrs.Factory(list)

    def send(self, tree: dict[str, bytes]) -> int:
        """Bytes of the lines of `tree` no remembered version of their file holds as often; then remember it."""
        unseen = 0
        for path, data in tree.items():
            versions = [seen[path] for seen in self.remembered if path in seen]
            if data not in versions:  # a version still in the cache costs nothing
                held: collections.Counter[bytes] = functools.reduce(
                    operator.or_, map(_lines, versions), collections.Counter()
                )  # most of each
                unseen += sum(len(line) * count for line, count in (_lines(data) - held).items())
        self.remembered = [tree, *self.remembered[: REMEMBERED - 1]]
        return unseen


@attrs.frozen
class Variant:
    """One configuration of ours, run as a proxy of its own."""

    name: str
    row: str  # its row in the table
    context: tuple[str, ...]  # its [context] settings


@attrs.frozen
class Plan:
    """How the replay asks: one-shot questions or a growing conversation, through which variants of ours."""

    context: tuple[str, ...] = ()
    conversation: bool = False
    system_bytes: int = 46_000
    answer_bytes: int = 1_800
    verbose: bool = False

    def variants(self) -> tuple[Variant, ...]:
        if not self.conversation:
            return (Variant("ours", "ours (epochs, stable order, warm-ups)", self.context),)
        return (
            Variant(
                "ours, conversations off", "ours, conversations off (diff first)", (*self.context, "conversations=off")
            ),
            Variant(
                "ours, conversations on",
                "ours, conversations on (changes in place)",
                (*self.context, "conversations=on"),
            ),
        )


@attrs.define
class Client:
    """What the client sends after each step: the one question, or its whole conversation so far.

    A conversation starts with a system prompt and a question; every later request adds the answer to
    the previous question (the client's own fixed-size text: the recording upstream only says "ok")
    and a new question.
    """

    plan: Plan
    messages: list[dict[str, str]] = attrs.Factory(list)
    asked: int = 0

    def next(self) -> tuple[list[dict[str, str]], int]:
        """The messages of the next request, and the bytes of those no earlier request held."""
        self.asked += 1
        if not self.plan.conversation:  # a new question each time: a one-shot client starts no conversation
            new = [_message("user", f"{QUESTION} (asked {self.asked})")]
            self.messages = new
        else:
            number = sum(message["role"] == "user" for message in self.messages) + 1
            if number == 1:
                before = _message("system", prose(self.plan.system_bytes, "system prompt"))
            else:
                before = _message("assistant", prose(self.plan.answer_bytes, f"answer {number - 1}"))
            new = [before, _message("user", f"{QUESTION} (question {number})")]
            self.messages = [*self.messages, *new]
        return self.messages, sum(len(message["content"].encode()) for message in new)


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def prose(size: int, seed: str) -> str:
    """`size` bytes of text (ASCII), paragraphs of generated sentences, the same for the same seed."""
    rng, words, paragraphs, length = random.Random(seed), vocabulary(random.Random(0)), [], 0
    for _ in range(size):  # bounded: every paragraph adds at least a byte
        if length >= size:
            break
        paragraphs.append(textwrap.fill(" ".join(_sentence(rng, words) for _ in range(rng.randint(2, 6))), 88) + "\n\n")
        length += len(paragraphs[-1])
    return "".join(paragraphs)[:size]


@attrs.frozen
class Spent:
    """What one variant of ours recomputed for one step."""

    tokens: int
    prompts: int  # prompts its upstream received for the step (the question and any warm-ups)
    outcome: str  # the question's X-Scout-Conversation


@attrs.define
class Ours:
    """One proxy (a variant of ours) over the scratch clone, and the upstream recording what it sends."""

    variant: Variant
    url: str
    recorder: Recorder
    cache: PrefixCache = attrs.Factory(PrefixCache)
    counted: int = 0  # prompts already sent through `cache`
    outcomes: list[str] = attrs.Factory(list)  # each question's X-Scout-Conversation
    epochs: dict[str, Any] = attrs.Factory(dict)  # the proxy's last /health "snapshot"

    async def ask(self, http: aiohttp.ClientSession, messages: list[dict[str, str]]) -> Spent:
        async with http.post(f"{self.url}/v1/chat/completions", json={"messages": messages}) as response:
            assert response.status == 200, await response.text()
            self.outcomes.append(response.headers.get("X-Scout-Conversation", "none"))
        await self.settle(http)
        before = self.counted
        return Spent(self.tally(), self.counted - before, self.outcomes[-1])

    async def settle(self, http: aiohttp.ClientSession) -> None:
        """Wait (boundedly) for a rebase the question started: a developer reads the answer before going on."""
        for _ in range(600):
            async with http.get(f"{self.url}/health") as response:
                self.epochs = (await response.json())["snapshot"]
            if self.epochs["state"] != "building":
                return
            await asyncio.sleep(0.05)

    def tally(self) -> int:
        """Send the prompts received since the last tally through the cache model: the tokens they recomputed."""
        fresh = self.recorder.prompts[self.counted :]
        self.counted += len(fresh)
        return sum(map(self.cache.send, fresh))


@attrs.frozen
class Step:
    label: str
    ours: tuple[Spent, ...]  # each variant's
    original: int  # tokens the original design recomputed for it
    lower: int  # tokens the lower bound counts for it


@attrs.define
class Session:
    """The variants of ours over the scratch clone, the client asking them, the other designs' counts."""

    http: aiohttp.ClientSession
    ours: list[Ours]
    scratch: Path
    rules: ContentRules
    cap: int
    plan: Plan
    client: Client
    original: PrefixCache = attrs.Factory(PrefixCache)
    floor: Floor = attrs.Factory(Floor)
    steps: list[Step] = attrs.Factory(list)

    async def ask(self, label: str) -> None:
        """The request after a step; the first prompt is the cold start, counted in full by `report`."""
        unseen = self.floor.send(work_tree(self.scratch))
        messages, new = self.client.next()
        spent = [await ours.ask(self.http, messages) for ours in self.ours]
        original = self.original.send(original_prompt(self.scratch, self.rules, self.cap, messages))
        lower = (unseen + new) // BYTES_PER_TOKEN if self.steps else 0
        self.steps.append(Step(label, tuple(spent), original, lower))


@contextlib.asynccontextmanager
async def proxied(scratch: Path, workdir: Path, plan: Plan) -> AsyncIterator[Session]:
    """A proxy per variant of ours over `scratch`, each in front of its recording upstream, all on 127.0.0.1."""
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        started = [
            await stack.enter_async_context(_proxy(scratch, workdir / f"proxy-{number}", variant))
            for number, variant in enumerate(plan.variants())
        ]
        config = started[0][1]
        ours = [found for found, _ in started]
        rules, cap = ContentRules.from_config(config), config.repository.max_snapshot_bytes
        yield Session(http, ours, scratch, rules, cap, plan, Client(plan))
        for each in ours:
            await each.settle(http)


@contextlib.asynccontextmanager
async def _proxy(scratch: Path, workdir: Path, variant: Variant) -> AsyncIterator[tuple[Ours, Config]]:
    """The real proxy over `scratch` with the variant's settings, in front of a recording upstream."""
    recorder = Recorder()
    upstream = web.Application(client_max_size=2**31)
    upstream.router.add_post("/v1/chat/completions", recorder.handle)
    upstream_runner = await _serve(upstream)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "replay.ini"
        config_path.write_text(
            f"[server]\nlog_level = warning\n[upstream]\nurl = http://127.0.0.1:{_port(upstream_runner)}/v1\n"
            f"[repository]\npath = {scratch}\nmax_snapshot_bytes = 1GiB\n[context]\nstate_dir = {workdir / 'state'}\n"
            + "".join(f"{setting.replace('=', ' = ', 1)}\n" for setting in variant.context)
        )
        config = load_config(config_path)
        proxy_runner = await _serve(make_app(config))
        try:
            yield Ours(variant, f"http://127.0.0.1:{_port(proxy_runner)}", recorder), config
        finally:
            await proxy_runner.cleanup()
    finally:
        await upstream_runner.cleanup()


async def _serve(app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _port(runner: web.AppRunner) -> int:
    port: int = runner.addresses[0][1]
    return port


def report(session: Session, replayed: str) -> None:
    """The designs' totals, with and without the cold start; with --verbose, each step's first."""
    for ours in session.ours:
        ours.tally()  # warm-ups after the last question
    if session.plan.verbose:
        _breakdown(session)
    first_prompt = session.ours[0].recorder.prompts[0]
    print(
        f"{replayed}: {len(session.steps)} questions, first snapshot "
        f"{session.ours[0].recorder.snapshot_bytes / 1e6:.2f} MB, first prompt {len(first_prompt) / 1e6:.2f} MB"
    )
    for ours in session.ours:
        epochs, outcomes = ours.epochs, sorted(collections.Counter(ours.outcomes).items())
        print(
            f"  {ours.variant.name}: {len(ours.recorder.prompts) - len(session.steps)} warm-ups, "
            f"rebased {epochs['rebases']} times, folded {epochs['folds']} times; "
            f"X-Scout-Conversation: {', '.join(f'{outcome} {count}' for outcome, count in outcomes)}"
        )
    if session.plan.conversation:
        sent = session.client.messages
        print(
            f"  conversation: system prompt {session.plan.system_bytes:,} bytes, answers {session.plan.answer_bytes:,} "
            f"bytes; the last request had {len(sent)} messages, {sum(len(m['content']) for m in sent):,} bytes"
        )
    print(f"{'design':48}{'recomputed tokens':>18}{'vs original':>13}{'after the cold start':>22}{'vs original':>13}")
    original, lower = session.original, sum(step.lower for step in session.steps)
    floor = (lower + len(first_prompt) // BYTES_PER_TOKEN, lower)
    rows = [
        ("original (every commit, id first, path order)", original.recomputed, original.recomputed - original.cold),
        *((ours.variant.row, ours.cache.recomputed, ours.cache.recomputed - ours.cache.cold) for ours in session.ours),
        ("lower bound (only unremembered bytes)", *floor),
    ]
    for label, total, steady in rows:
        print(
            f"{label:48}{total:>18,}{total / max(rows[0][1], 1):>13.1%}{steady:>22,}{steady / max(rows[0][2], 1):>13.1%}"
        )
    for ours in session.ours:
        cache = ours.cache
        print(
            f"{ours.variant.name} / lower bound: {cache.recomputed / max(floor[0], 1):.2f}x, "
            f"after the cold start {(cache.recomputed - cache.cold) / max(floor[1], 1):.2f}x"
        )
    totals = "".join(f", {ours.variant.name} {ours.cache.total:,}" for ours in session.ours)
    print(f"prompt tokens sent: original {original.total:,}{totals}")


def _breakdown(session: Session) -> None:
    """Each step's recomputed tokens, design by design; then, after the cold start, where ours spent them."""
    for step in session.steps:
        spent = "; ".join(
            f"{ours.variant.name} {each.tokens:>9,} in {each.prompts} ({each.outcome})"
            for ours, each in zip(session.ours, step.ours, strict=True)
        )
        print(f"{step.label:44} {spent}; original {step.original:>9,}, lower {step.lower:>7,}")
    for index, ours in enumerate(session.ours):
        kinds: dict[str, list[Step]] = {"started afresh": [], "with a warm-up": [], "other": []}
        for step in session.steps[1:]:
            this = step.ours[index]
            kinds[
                "started afresh" if this.outcome == "afresh" else "with a warm-up" if this.prompts > 1 else "other"
            ].append(step)
        where = ", ".join(
            f"{len(steps)} steps {kind} {sum(step.ours[index].tokens for step in steps):,} "
            f"(lower bound {sum(step.lower for step in steps):,})"
            for kind, steps in kinds.items()
        )
        print(f"{ours.variant.name}, after the cold start: {where}")


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
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(wheels),
                f"{package}=={version}",
            ],
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
    when = START if repo.head_is_unborn else repo.head.peel(pygit2.Commit).commit_time + 3600  # an hour apart
    author = pygit2.Signature("replay", "replay@example.com", when, 0)
    return str(repo.create_commit("HEAD", author, author, message, index.write_tree(), parents))


def _scratch_clone(source: Path, path: Path) -> pygit2.Repository:
    """A clone with the whole history, detached from `source` so nothing can reach back to it."""
    scratch = pygit2.clone_repository(str(source), str(path))
    scratch.remotes.delete("origin")
    return scratch


@functools.lru_cache(maxsize=8)  # a few: the working day goes back and forth between branches
def original_snapshot(workdir: Path, commit: str, rules: Any, cap: int) -> str:
    """The original design's snapshot: commit id first, files in path order."""
    repo = open_repository(workdir)
    paths = tuple(sorted(_paths(repo[commit].peel(pygit2.Tree))))
    snapshot = build_snapshot(workdir, commit, rules, cap, Epoch(commit, paths))
    return f"Commit {commit}\n" + snapshot.text()


def original_prompt(workdir: Path, rules: Any, cap: int, messages: list[dict[str, str]]) -> bytes:
    """The original design's prompt: its snapshot of HEAD, then the diff against HEAD, then the messages."""
    repo = open_repository(workdir)
    head = repo.head.peel(pygit2.Commit)
    diff = working_diff(repo, head, head, rules, [])
    snapshot = original_snapshot(workdir, str(head.id), rules, cap)
    contents = [message["content"] for message in messages]
    return "\n".join([snapshot, json.loads(b'"' + diff.json_text + b'"'), *contents]).encode()


def _paths(tree: pygit2.Tree, prefix: str = "") -> list[str]:
    found = []
    for entry in tree:
        if entry.type_str == "tree":
            found += _paths(entry.peel(pygit2.Tree), f"{prefix}{entry.name}/")
        else:
            found.append(f"{prefix}{entry.name}")
    return found


async def replay(source: Path, commits: int, steps: int, workdir: Path, plan: Plan) -> None:
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
    scratch = _scratch_clone(source, scratch_path)  # the history up to the window, too
    scratch.reset(chain[0].id, ResetMode.HARD)
    async with proxied(scratch_path, workdir, plan) as session:
        for number, (previous, commit) in enumerate(itertools.pairwise(chain), 1):
            deltas = list(previous.tree.diff_to_tree(commit.tree).deltas)
            size = max(1, -(-len(deltas) // steps))
            for start in range(0, len(deltas), size):
                for delta in deltas[start : start + size]:
                    _apply(history, delta, scratch_path)
                await session.ask(f"commit {number}, files {start + 1}-{min(start + size, len(deltas))}")
            _commit_all(scratch, commit.message)
    report(session, f"replayed {len(chain) - 1} commits of {source.name}")


def _apply(history: pygit2.Repository, delta: pygit2.DiffDelta, root: Path) -> None:
    """Make one file as the commit has it."""
    old_path, new_path = root / delta.old_file.path, root / delta.new_file.path
    if delta.status == pygit2.enums.DeltaStatus.DELETED:
        old_path.unlink(missing_ok=True)
        return
    if old_path != new_path:
        old_path.unlink(missing_ok=True)
    new_path.parent.mkdir(parents=True, exist_ok=True)
    new_path.write_bytes(history[delta.new_file.id].peel(pygit2.Blob).data)


# The working day: a generated repository, its edits, and the day's script.

FILES = 300
REPOSITORY_BYTES = 4_500_000
COMMITS = 50
PULLED = 20
#: Kinds of generated files: suffix, folder, share of the files (percent).
KINDS = (
    (".py", "src", 50),
    (".py", "tests", 12),
    (".md", "docs", 14),
    (".json", "data", 8),
    (".csv", "data", 6),
    (".txt", "notes", 10),
)
#: Substrings the secret scanner looks for: kept out of generated words so that nothing is redacted.
SECRET_HINTS = ("pass", "secret", "token", "key", "aws", "akia", "asia", "aiza", "xox", "eyj", "glpat", "gh")
SYLLABLES = (*(c + v for c in "bcdfglmnprstvz" for v in "aeiou"), "an", "er", "in", "or", "ul", "est", "ion", "ing")
CODE = (
    "    {a} = {b}({c}, {n})\n",
    "    {a} = {b}.{c}({d}, {n})\n",
    "    if {a} > {n}:\n        {b} = {c}.{d}({a})\n",
    "    for {a} in {b}.{c}():\n        {d}.append({a})\n",
    "    {a}.{b} = {c} or {d}\n",
    "    # {s}\n",
    "    with {a}.{b}({c}) as {d}:\n        {d}.{a}({n}, {c}={b})\n",
    "    try:\n        {a} = {b}[{n}]\n    except {c}Error:\n        {a} = None\n",
)


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    for _ in range(size * 10):  # bounded: far more combinations than words asked for
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if len(word) > 2 and not any(hint in word for hint in SECRET_HINTS):
            words.add(word)
        if len(words) == size:
            break
    return sorted(words)


def _sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choices(words, k=rng.randint(6, 16))).capitalize() + "."


def _block(suffix: str, rng: random.Random, words: list[str]) -> list[str]:
    """One unit of a file of this kind: a function, a paragraph, a run of records."""
    if suffix in (".md", ".txt", ".rst"):
        heading = [f"## {_sentence(rng, words)[:-1]}\n", "\n"] if rng.random() < 0.3 else []
        paragraph = textwrap.fill(" ".join(_sentence(rng, words) for _ in range(rng.randint(2, 8))), 88)
        return [*heading, *(line + "\n" for line in paragraph.splitlines()), "\n"]
    if suffix == ".json":
        return [
            f'  {{"id": {rng.randrange(10**6)}, "name": "{rng.choice(words)}", "tags": ["{rng.choice(words)}", '
            f'"{rng.choice(words)}"], "weight": {rng.random():.4f}}},\n'
            for _ in range(rng.randint(5, 20))
        ]
    if suffix == ".csv":
        return [
            f"{rng.randrange(10**6)},{rng.choice(words)},{rng.choice(words)},{rng.random():.4f}\n"
            for _ in range(rng.randint(5, 20))
        ]
    arguments = rng.sample(words, rng.randint(0, 3))
    name = f"{rng.choice(words)}_{rng.choice(words)}"
    lines = [f"def {name}({', '.join(arguments)}):\n", f'    """{_sentence(rng, words)}"""\n']
    for _ in range(rng.randint(2, 12)):
        a, b, c, d = rng.sample(words, 4)
        lines.append(rng.choice(CODE).format(a=a, b=b, c=c, d=d, n=rng.randrange(1000), s=_sentence(rng, words)))
    return [*lines, f"    return {rng.choice(arguments or words)}\n", "\n", "\n"]


def _content(suffix: str, rng: random.Random, words: list[str], size: int) -> str:
    lines: list[str] = []
    for _ in range(size):  # bounded: every block adds at least a line
        if sum(map(len, lines)) >= size:
            break
        lines += _block(suffix, rng, words)
    return "".join(lines)


def edit_file(path: Path, rng: random.Random, words: list[str]) -> None:
    """A typical edit: a new block somewhere in the file, a word changed in a line or two (line endings kept)."""
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    for _ in range(rng.randint(0, 2)):
        at = rng.randrange(len(lines)) if lines else 0
        found = re.findall(r"[a-z]{3,}", lines[at]) if lines else []
        if found:
            lines[at] = lines[at].replace(rng.choice(found), rng.choice(words), 1)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = rng.randrange(len(lines) + 1)
    lines[at:at] = _block(path.suffix, rng, words)
    path.write_bytes("".join(lines).encode("utf-8"))


def generated_repository(seed: int, workdir: Path) -> Path:
    """About 300 text files (4.5 MB) grown over 50 commits, the same for the same seed: sizeable, and offline."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    packages = rng.sample(words, 8)
    sizes: dict[str, int] = {}
    for _ in range(FILES * 4):  # bounded: a clash of names only costs a draw
        suffix, folder, _ = rng.choices(KINDS, weights=[kind[2] for kind in KINDS])[0]
        name = f"{rng.choice(words)}_{rng.choice(words)}"
        if folder == "src":
            path = f"src/{rng.choice(packages)}/{name}{suffix}"
        else:
            path = f"{folder}/{'test_' if folder == 'tests' else ''}{name}{suffix}"
        sizes.setdefault(path, min(150_000, max(300, int(rng.lognormvariate(9.1, 1.0)))))
        if len(sizes) == FILES:
            break
    scale = REPOSITORY_BYTES / sum(sizes.values())
    root = workdir / f"generated-{seed}"
    repo = pygit2.init_repository(str(root), initial_head="main")
    paths = list(sizes)
    first, later = paths[: FILES * 2 // 3], paths[FILES * 2 // 3 :]
    present: list[str] = []
    for number in range(COMMITS):
        if number:
            for path in rng.sample(present, rng.randint(1, 4)):
                edit_file(root / path, rng, words)
        for path in first if number == 0 else later[number - 1 :: COMMITS - 1]:
            text = _content(Path(path).suffix, rng, words, int(sizes[path] * scale))
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text, encoding="utf-8")
            present.append(path)
        _commit_all(repo, _sentence(rng, words))
    total = sum((root / path).stat().st_size for path in present)
    print(f"made a repository of {len(present)} files ({total / 1e6:.2f} MB) and {COMMITS} commits from seed {seed}")
    return root


def editable_files(repo: pygit2.Repository, rng: random.Random) -> list[str]:
    """HEAD's UTF-8 text files of 1 to 100 kB, shuffled: the day edits them."""
    tree = repo.head.peel(pygit2.Tree)
    found = []
    for path in sorted(_paths(tree)):
        if tree[path].type_str != "blob":
            continue  # a submodule
        blob = tree[path].peel(pygit2.Blob)
        if 1000 <= blob.size <= 100_000 and not blob.is_binary:
            with contextlib.suppress(UnicodeDecodeError):
                blob.data.decode("utf-8")
                found.append(path)
    rng.shuffle(found)
    return found


def pulled_commits(source: Path, path: Path, files: list[str], rng: random.Random, words: list[str]) -> Path:
    """Another clone with 20 commits on top of HEAD that edit `files`: what a pull brings."""
    upstream = pygit2.clone_repository(str(source), str(path))
    for _number in range(PULLED):
        for name in rng.sample(files, rng.randint(1, 3)):
            edit_file(path / name, rng, words)
        _commit_all(upstream, f"upstream: {_sentence(rng, words)}")
    return path


def work_tree(root: Path) -> dict[str, bytes]:
    """Every file of the work tree but `.git` and what git ignores (a symbolic link: its target)."""
    repo = pygit2.Repository(str(root))
    files = {}
    for folder, folders, names in os.walk(root):
        here = Path(folder).relative_to(root)
        folders[:] = [
            name for name in folders if name != ".git" and not repo.path_is_ignored(f"{(here / name).as_posix()}/")
        ]
        for name in names + [name for name in folders if os.path.islink(os.path.join(folder, name))]:
            path, relative = Path(folder) / name, (here / name).as_posix()
            if not repo.path_is_ignored(relative):
                files[relative] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return files


@attrs.define
class Git:
    """`git` in the scratch clone, five minutes a command: the day's commits get the same ids on every run."""

    root: Path
    clock: int

    def __call__(self, *args: str) -> None:
        self.clock += 300
        stamp = f"@{self.clock} +0000"
        env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
        env.update(
            GIT_AUTHOR_NAME="replay",
            GIT_AUTHOR_EMAIL="replay@example.com",
            GIT_AUTHOR_DATE=stamp,
            GIT_COMMITTER_NAME="replay",
            GIT_COMMITTER_EMAIL="replay@example.com",
            GIT_COMMITTER_DATE=stamp,
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_CONFIG_NOSYSTEM="1",
            GIT_EDITOR="true",
        )
        done = subprocess.run(["git", *args], cwd=self.root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")


def day(git: Git, main: str, upstream: Path, files: list[str], rng: random.Random, words: list[str]) -> Iterator[str]:
    """The day's script: each step changes the scratch clone as a developer would, then names itself."""

    def edit(path: str) -> str:
        edit_file(git.root / path, rng, words)
        return f"edit {path}"

    yield f"start on {main}"
    git("checkout", "-b", "feature")
    yield "checkout -b feature"
    added = Path(files[0]).with_name(f"{rng.choice(words)}_{rng.choice(words)}{Path(files[0]).suffix}").as_posix()
    for part in range(1, 4):
        for path in rng.sample(files[:6], 3):
            yield edit(path)
        if part == 1:
            (git.root / added).write_text(_content(Path(added).suffix, rng, words, 3000), encoding="utf-8")
            yield f"add {added}"
        git("add", "--all")
        git("commit", "--message", f"feature: part {part}")
        yield f"commit part {part}"
    git("checkout", main)
    yield f"checkout {main}"
    git("fetch", "--quiet", str(upstream), "HEAD")
    git("merge", "--ff-only", "FETCH_HEAD")
    yield f"pull {PULLED} commits into {main}"
    for branch in ("feature", main, "feature"):
        git("checkout", branch)
        yield f"checkout {branch}"
    git("rebase", main)
    yield f"rebase feature onto {main}"
    yield edit(files[0])
    git("commit", "--amend", "--all", "--no-edit")
    yield "commit --amend"
    yield edit(files[1])
    git("stash")
    yield "stash"
    yield edit(files[6])
    git("commit", "--all", "--message", "feature: a fix")
    yield "commit a fix"
    git("stash", "pop")
    yield "stash pop"
    yield edit(files[2])
    git("commit", "--all", "--message", "feature: part 4")
    yield "commit part 4"
    git("checkout", main)
    yield f"checkout {main}"
    git("merge", "--no-ff", "--message", "Merge branch 'feature'", "feature")
    yield f"merge --no-ff feature into {main}"
    yield edit(files[7])


async def working_day(source: Path | None, seed: int, workdir: Path, plan: Plan) -> None:
    rng, words = random.Random(f"day {seed}"), vocabulary(random.Random(seed))
    origin = source or generated_repository(seed, workdir)
    scratch_path = workdir / "replay"
    scratch = _scratch_clone(origin, scratch_path)
    files = editable_files(scratch, rng)
    if len(files) < 16:
        raise SystemExit(f"{origin} has {len(files)} text files of 1 to 100 kB; the day edits at least 16")
    upstream = pulled_commits(origin, workdir / "upstream", files[8:48], rng, words)
    main = "main" if scratch.head_is_detached else scratch.head.shorthand
    git = Git(scratch_path, scratch.head.peel(pygit2.Commit).commit_time)
    git("checkout", "-B", main)
    async with proxied(scratch_path, workdir, plan) as session:
        for label in day(git, main, upstream, files[:8], rng, words):
            await session.ask(label)
    on = source.name if source else "the generated repository"
    report(session, f"replayed a working day (seed {seed}) on {on}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", type=Path, help="a git repository whose history to replay")
    parser.add_argument("--pypi", metavar="PACKAGE", help="replay consecutive wheel releases of this package instead")
    parser.add_argument("--commits", type=int, default=30, help="commits to replay (default 30)")
    parser.add_argument("--steps", type=int, default=12, help="most edits (questions) per commit (default 12)")
    parser.add_argument(
        "--until", metavar="VERSION", help="with --pypi: the last release replayed (default: the newest)"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=30,
        help="with --pypi: earlier releases committed first, the history the replay starts from (default 30)",
    )
    parser.add_argument(
        "--working-day",
        action="store_true",
        help="replay a scripted day of branch work on REPOSITORY or on one generated from --seed",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="with --working-day: the generated repository and the day's edits (default 1)",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [context] setting for the proxy, e.g. rebase_diff_share=0.05 (repeatable)",
    )
    parser.add_argument(
        "--conversation",
        action="store_true",
        help="the client resends a growing conversation (a system prompt, then a question and an answer a step) "
        "instead of a one-shot question; ours runs twice, conversations off and on",
    )
    parser.add_argument(
        "--system-bytes",
        type=int,
        default=46_000,
        help="with --conversation: the system prompt's size (default 46000)",
    )
    parser.add_argument(
        "--answer-bytes",
        type=int,
        default=1_800,
        help="with --conversation: each answer's size (default 1800)",
    )
    parser.add_argument("--verbose", action="store_true", help="print what each step recomputed, design by design")
    args = parser.parse_args()
    if args.conversation and any(setting.partition("=")[0].strip() == "conversations" for setting in args.context):
        parser.error("--conversation runs ours with conversations off and on; leave conversations out of --context")
    plan = Plan(tuple(args.context), args.conversation, args.system_bytes, args.answer_bytes, args.verbose)
    if args.working_day and args.pypi is not None:
        parser.error("--working-day replays on a REPOSITORY or a generated one, not --pypi")
    if not args.working_day and (args.repository is None) == (args.pypi is None):
        parser.error("name a REPOSITORY or --pypi PACKAGE")
    with tempfile.TemporaryDirectory(prefix="scout-replay-") as scratch:
        workdir = Path(scratch)
        if args.working_day:
            source = args.repository.resolve() if args.repository else None
            asyncio.run(working_day(source, args.seed, workdir, plan))
            return
        source = args.repository or history_from_pypi(args.pypi, args.history + args.commits + 1, args.until, workdir)
        asyncio.run(replay(source.resolve(), args.commits, args.steps, workdir, plan))


if __name__ == "__main__":
    main()
