"""Conversations: the context a conversation started with stays put while the conversation grows.

Chat UIs and coding agents resend their whole conversation on every turn, and edit files between
turns. If every request carried the current working diff in front of the conversation, each edit
would make the upstream recompute the whole conversation. Instead a conversation keeps the
snapshot and the working diff it started with, and what changed in the work tree since the upstream
last saw it goes in as a message of its own where it happened, and stays there, byte for byte:

    [snapshot][working diff at the start][m1 … mk][changes since mk][mk+1 …]

A request continues the conversation whose messages it begins with (compared by a hash of each
message's encoding; the longest match wins, within the client's key). A fork (a regenerated answer,
sub-agents sharing a prefix) continues from where it branched. A conversation starts afresh (one
recompute, counted) when its epoch is no longer held (see `Epochs.snapshot_of`), when the client
rewrote history past an inserted change, or when its changes outgrow the diff's budget. At most
`[context] max_conversations` are kept, least recently used first out; they live in memory only.

Requests of different conversations prepare at once; the turns of one conversation take turns (a
lock of its own, held while the work tree is read against what it last showed), so no change is
inserted twice or lost.
"""

from __future__ import annotations

import asyncio
import hashlib

import attrs

from ..apis.dialects import Dialect
from ..apis.validation import ClientRequest
from ..encoding import encode_text
from ..git.reader import RepositoryReader, WorkState
from ..git.snapshot import Snapshot
from ..metrics import Metrics
from .epochs import Epochs, Injection

#: Where a change sits: (position, "before") as a message of its own before the client's message
#: there (or after all of them); (position, "open" or "close") attached to that message's text.
Point = tuple[int, str]


@attrs.define
class Conversation:
    """One conversation: its context, its messages' hashes, and the changes inserted among them."""

    scope: str
    #: The epoch it started on (its snapshot is shown while the proxy holds it).
    base: str | None
    #: The working diff it started with, as encoded for the upstream, and its bytes of text.
    start: bytes
    start_bytes: int
    hashes: list[bytes]
    #: "system": changes are system messages of their own; "user": they open a user message;
    #: "attached" (the Messages API): they open the user's question or close its tool results.
    placement: str = "system"
    #: Change texts by where they were inserted.
    inserts: dict[Point, list[str]] = attrs.Factory(dict)
    #: The work tree as the conversation last showed it, where it differs from the base.
    shown: WorkState = attrs.Factory(dict)
    inserted_bytes: int = 0
    #: Held by the request that continues it, while it reads the work tree (a branch gets its own).
    turn: asyncio.Lock = attrs.field(init=False, factory=asyncio.Lock, eq=False, repr=False)

    def render(self, parts: tuple[bytes, ...], api: Dialect) -> tuple[bytes, ...]:
        """The client's messages with every change where it was inserted, each encoded."""
        out: list[bytes] = []
        for position, part in enumerate(parts):
            out += [api.separate(text) for text in self.inserts.get((position, "before"), [])]
            if texts := self.inserts.get((position, "open")):
                part = api.opened(part, encode_text("".join(texts)))
            if texts := self.inserts.get((position, "close")):
                part = api.closed(part, encode_text("".join(texts)))
            out.append(part)
        out += [api.separate(text) for text in self.inserts.get((len(parts), "before"), [])]
        return tuple(out)

    def settled_within(self, matched: int) -> bool:
        """Whether every inserted change lies within the first `matched` messages (or just after)."""
        return all(_end(point) <= matched for point in self.inserts)

    def branch(self, matched: int) -> Conversation:
        """A copy that keeps the first `matched` messages (what a fork or a rewrite continues from)."""
        return attrs.evolve(
            self,
            hashes=self.hashes[:matched],
            inserts={point: list(found) for point, found in self.inserts.items()},
            shown=dict(self.shown),
        )


@attrs.frozen
class Prepared:
    """What goes upstream for one request: the context messages, then the conversation."""

    snapshot: Snapshot
    #: The working diff, JSON-encoded, and its bytes of text.
    start: bytes
    start_bytes: int
    parts: tuple[bytes, ...]
    #: "new", "continued" or "afresh" (a conversation that could not continue), or "off".
    outcome: str
    #: Bytes of text the proxy put in: the snapshot, the working diff, the changes inserted.
    injected_bytes: int


def message_hashes(parts: tuple[bytes, ...]) -> list[bytes]:
    return [hashlib.sha256(part).digest() for part in parts]


def matched_length(seen: list[bytes], new: list[bytes]) -> int:
    """How many leading messages two conversations share."""
    count = 0
    for a, b in zip(seen, new, strict=False):
        if a != b:
            break
        count += 1
    return count


def insertion_point(shapes: tuple[str, ...], boundary: int, placement: str = "system") -> Point | None:
    """Where the changes since the upstream last saw the conversation go (None: not yet).

    Before the client's last message when that is a user's new question (the edit came before it),
    else after everything (an agent's tool results: the edit was the tool call's doing, and nothing
    may come between a call and its results); never inside what the upstream already saw. Placed
    "user", a change opens the new question, and waits for one when there is none. Placed
    "attached", it opens the new question, or closes the new tool results.
    """
    last = len(shapes) - 1
    fresh = bool(shapes) and last >= boundary
    if fresh and shapes[-1] == "user":
        return (last, "before") if placement == "system" else (last, "open")
    if placement == "system":
        return (len(shapes), "before")
    if placement == "attached" and fresh and shapes[-1] == "tool":
        return (last, "close")
    return None


def _end(point: Point) -> int:
    """The number of messages the upstream must have seen for a change at `point` to be behind it."""
    position, edge = point
    return position if edge == "before" else position + 1


class Conversations:
    """The conversations being kept, least recently used first, at most `capacity`, on the epochs
    of one repository (read for a conversation's changes by `reader`)."""

    def __init__(self, capacity: int, metrics: Metrics, epochs: Epochs, reader: RepositoryReader) -> None:
        self.capacity = capacity
        self._metrics = metrics
        self._epochs = epochs
        self._reader = reader
        self._kept: dict[int, Conversation] = {}  # by identity, in order of use

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict()

    async def prepare(self, request: ClientRequest, api: Dialect, scope: str, placement: str = "system") -> Prepared:
        """The context and messages for `request`: its conversation continued, or a new one (whose
        changes will be placed as `placement` says). Conversations of different APIs never mix."""
        injection = await self._epochs.inject()
        hashes = message_hashes(request.identities)
        scope = f"{api.name}:{scope}"
        while True:
            found, matched = self._find(scope, hashes)
            if found is None:
                return self._start(scope, hashes, api.placement(placement), injection, request, "new")
            async with found.turn:  # one request at a time continues a conversation
                again, still = self._find(scope, hashes)
                if again is not found or still != matched:
                    continue  # it moved on while this request waited its turn: look again
                continued = await self._continue(found, matched, request, api, hashes, injection)
            if continued is not None:
                self._metrics.conversations.inc((("outcome", "continued"),))
                return continued
            return self._start(scope, hashes, api.placement(placement), injection, request, "afresh")

    def _start(
        self,
        scope: str,
        hashes: list[bytes],
        placement: str,
        injection: Injection,
        request: ClientRequest,
        outcome: str,
    ) -> Prepared:
        """A new conversation on the current epoch ("afresh": one that could not continue)."""
        self._metrics.conversations.inc((("outcome", outcome),))
        diff, snapshot = injection.diff, injection.snapshot
        started = Conversation(
            scope, snapshot.commit, diff.json_text, diff.text_bytes, hashes, placement, shown=dict(injection.state)
        )
        self._keep(started)
        injected = snapshot.text_bytes + diff.text_bytes
        return Prepared(snapshot, diff.json_text, diff.text_bytes, request.parts, outcome, injected)

    async def _continue(
        self,
        conversation: Conversation,
        matched: int,
        request: ClientRequest,
        api: Dialect,
        hashes: list[bytes],
        injection: Injection,
    ) -> Prepared | None:
        snapshot = self._epochs.snapshot_of(conversation.base)
        if snapshot is None:
            self._drop(conversation)
            return None  # its epoch is no longer held: start on the current one
        found = conversation
        if matched < len(conversation.hashes):
            if not conversation.settled_within(matched):
                return None  # history rewritten past a change: the other branch may still go on
            conversation = conversation.branch(matched)
        change, now = await self._changes(snapshot, conversation.shown, injection)
        if now is None:
            return None
        point = insertion_point(request.shapes, matched, conversation.placement)
        if change is not None and point is not None:
            size = len(change.encode())
            if conversation.inserted_bytes + size > self._epochs.budget(snapshot):
                self._drop(found)
                return None  # the changes outgrew the budget a working diff has: start afresh
            conversation.inserts.setdefault(point, []).append(change)
            conversation.inserted_bytes += size
            self._metrics.change_bytes.inc(amount=size)
            conversation.shown = now
        elif change is None:
            conversation.shown = now
        conversation.hashes = hashes
        self._keep(conversation)
        injected = snapshot.text_bytes + conversation.start_bytes + conversation.inserted_bytes
        parts = conversation.render(request.parts, api)
        return Prepared(snapshot, conversation.start, conversation.start_bytes, parts, "continued", injected)

    async def _changes(
        self, snapshot: Snapshot, shown: WorkState, injection: Injection
    ) -> tuple[str | None, WorkState | None]:
        """The change message from the work tree as `shown` to now, and the work tree now (None:
        the conversation's base cannot serve). Read in worker threads, under no lock but the turn."""
        reader = self._reader
        now = injection.state if snapshot is injection.snapshot else await asyncio.to_thread(reader.state, snapshot)
        if now is None:
            return None, None
        return await asyncio.to_thread(reader.changes, snapshot, shown, now), now

    def _find(self, scope: str, hashes: list[bytes]) -> tuple[Conversation | None, int]:
        """The conversation sharing the most leading messages; of equals, one that can go on from
        there (no change inserted past that point), then the most recently used."""
        best, best_rank = None, (0, False)
        for conversation in reversed(self._kept.values()):
            if conversation.scope == scope:
                matched = matched_length(conversation.hashes, hashes)
                rank = (matched, conversation.settled_within(matched))
                if matched and rank > best_rank:
                    best, best_rank = conversation, rank
        return best, best_rank[0]

    def _drop(self, conversation: Conversation) -> None:
        """A conversation that cannot go on (its epoch gone, its changes over budget): make room."""
        self._kept.pop(id(conversation), None)

    def _keep(self, conversation: Conversation) -> None:
        self._kept.pop(id(conversation), None)
        self._kept[id(conversation)] = conversation
        self._evict()

    def _evict(self) -> None:
        while len(self._kept) > self.capacity:
            del self._kept[next(iter(self._kept))]
            self._metrics.conversations.inc((("outcome", "evicted"),))
        self._metrics.conversations_kept = len(self._kept)
