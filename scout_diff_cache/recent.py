"""The last requests, for the status page: each one's figures and diagnosis, the prompts the next
diagnoses compare with, rebases and folds on the same clock, and requests and conversations per
client. Memory only, bounded: the last `KEPT` requests and prompts."""

from __future__ import annotations

import collections
import time

import attrs

from .diagnosis import Diagnosis, Earlier, Prompt, diagnose, diverge
from .sent import excerpt
from .warming import WarmUps

#: Requests and prompts kept (a prompt holds its client's messages: about their size each).
KEPT = 60


@attrs.frozen
class Record:
    """One request as the page shows it: never its contents beyond the diagnosis's few bytes."""

    at: float
    client: str
    api: str
    outcome: str
    conversation: str | None
    diagnosis: Diagnosis


@attrs.frozen
class Event:
    """A rebase or a fold, when the proxy saw it had happened."""

    at: float
    kind: str


@attrs.frozen
class Seen:
    prompt: Prompt
    client: str
    api: str
    at: float


@attrs.define
class ClientFigures:
    requests: int = 0
    conversations: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


@attrs.define
class Recent:
    """What the status page remembers: the last requests and their prompts, the rebases and folds
    seen, and each client's totals (by key name)."""

    records: collections.deque[Record] = attrs.Factory(lambda: collections.deque(maxlen=KEPT))
    events: collections.deque[Event] = attrs.Factory(lambda: collections.deque(maxlen=KEPT))
    clients: dict[str, ClientFigures] = attrs.Factory(dict)
    #: Rebases and folds counted when last looked.
    counted: tuple[int, int] = (0, 0)
    _seen: collections.deque[Seen] = attrs.Factory(lambda: collections.deque(maxlen=KEPT))

    def closest(self, prompt: Prompt, client: str, api: str, warmups: WarmUps) -> Earlier | None:
        """The earlier prompt sharing the longest start with `prompt`: the previous request of its
        conversation, or of its epoch, or the warm-up."""
        candidates = [Earlier(seen.prompt, *_named(seen, client, api)) for seen in self._seen]
        if warmups.warmed is not None:
            candidates.append(Earlier(warmups.warmed, "the warm-up"))
        if not candidates:
            return None
        shared = [diverge(prompt, earlier.prompt, _none).shared for earlier in candidates]
        return candidates[max(range(len(candidates)), key=lambda index: (shared[index], index))]

    def add(
        self,
        prompt: Prompt,
        usage: tuple[int | None, int | None],
        request: tuple[str, str, str, str | None],
        warmups: WarmUps,
    ) -> Diagnosis:
        """Diagnose a request's `prompt` from the upstream's (prompt, cached) tokens, keep it, and
        return the diagnosis; `request` is its (client, api, outcome, conversation)."""
        client, api, outcome, conversation = request
        diagnosis = diagnose(prompt, self.closest(prompt, client, api, warmups), *usage, excerpt)
        now = time.time()
        self.records.append(Record(now, client, api, outcome, conversation, diagnosis))
        self._seen.append(Seen(prompt, client, api, now))
        figures = self.clients.setdefault(client, ClientFigures())
        figures.requests += 1
        figures.conversations += conversation in ("new", "afresh")
        figures.prompt_tokens += usage[0] or 0
        figures.cached_tokens += min(usage[1] or 0, usage[0] or 0)
        return diagnosis

    def observe(self, rebases: int, folds: int) -> None:
        """Note a rebase or fold counted since last looked, at this time (the page's clock)."""
        now = time.time()
        for kind, was, count in (("rebase", self.counted[0], rebases), ("fold", self.counted[1], folds)):
            self.events.extend(Event(now, kind) for _ in range(min(count - was, KEPT)))
        self.counted = (rebases, folds)


def _named(seen: Seen, client: str, api: str) -> tuple[str, bool]:
    """What an earlier request was, as the diagnosis words it (by key name, never by key), and
    whether it was the same client's on the same API."""
    clock = time.strftime("%H:%M:%S", time.localtime(seen.at))
    if (seen.client, seen.api) == (client, api):
        return f"this client's previous request ({clock})", True
    return f"a {seen.api} request of {seen.client} ({clock})", False


def _none(data: bytes, offset: int) -> str:
    return ""
