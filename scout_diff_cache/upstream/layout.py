"""Where the repository context sits on the chat and Responses APIs, as the upstream's template allows.

Most chat templates (Llama 4's, ChatML) render every system message where it stands, so the
*separate* layout sends the snapshot and the working diff as two system messages of their own and
the client's messages after them unchanged. Strict templates (Gemma's, Mistral's) take one system
message, first, then user and assistant turns in strict alternation, and refuse anything else: the
*strict* layout sends one system message holding the snapshot, the working diff, then the client's
own system text, and a work-tree change opens a user message. Both begin with the same bytes, so
a prefix cache holds the snapshot the same way.

`[context] layout` chooses one, or `auto` learns it from the upstream: a two-line probe with two
system messages, and if that is refused, one with a single system message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from ..errors import ProxyError, UpstreamRejected
from ..shared import Learned, SharedTasks


@attrs.frozen
class Layout:
    strict: bool
    #: Why this layout: what was configured, or what the upstream answered.
    reason: str

    @property
    def name(self) -> str:
        return "strict" if self.strict else "separate"


#: Until the upstream has answered a probe (it is down, say), requests go as most templates take them.
UNLEARNED = Layout(False, "not learned yet: the upstream has not answered a probe")


def configured(setting: str) -> Layout | None:
    """The layout `[context] layout` forces, or None for `auto`."""
    if setting == "auto":
        return None
    return Layout(setting == "strict", f"[context] layout = {setting}")


def judge(separate: ProxyError | None, strict: ProxyError | None) -> Layout:
    """The layout to use, from how the upstream answered each probe (None: it answered 200).

    Only a refusal of the request itself (400, 422) says something about the template. Another
    4xx (an unknown model, a key the upstream does not take) says the probe cannot tell: the
    separate layout, with the reason, until the upstream or the configuration changes.
    """
    if separate is None:
        return Layout(False, "the upstream accepts system messages after the first")
    if not _refused(separate):
        return Layout(False, f"the upstream refused the probe itself ({_short(separate)}); check [upstream] model")
    if strict is None:
        return Layout(True, f"the upstream refused a second system message ({_short(separate)}) and took one")
    return Layout(False, f"the upstream refused both layouts ({_short(strict)}); sending the separate one")


def _short(error: ProxyError, limit: int = 240) -> str:
    """The upstream's message on one line, its start and its end where it is long (llama.cpp puts
    the template's own words last, after its parser's trace)."""
    text = " ".join(error.message.split())
    return text if len(text) <= limit else f"{text[: limit // 3]} … {text[-(limit - limit // 3) :]}"


#: The statuses a template's refusal comes with (llama.cpp and vLLM: 400; some servers: 422).
REFUSALS = frozenset({400, 422})

#: Sends a chat probe with the given number of system messages; None when it answered 200.
Probe = Callable[[int], Awaitable["ProxyError | None"]]


class Layouts(Learned[Layout]):
    """The layout in force: configured, or learned once from the upstream and again after it was
    unreachable (a restarted model server may serve another model with another template)."""

    def __init__(self, setting: str, probe: Probe, tasks: SharedTasks) -> None:
        super().__init__(configured(setting), UNLEARNED, tasks)
        self._probe = probe

    def reconfigured(self, setting: str) -> Layouts:
        """A fresh start for a new setting or another upstream: nothing learned is kept."""
        return Layouts(setting, self._probe, self._tasks)

    async def _ask(self) -> Layout | None:
        separate = await self._probe(2)
        strict = await self._probe(1) if _refused(separate) else None
        answers = [answer for answer in (separate, strict) if answer is not None]
        if any(not isinstance(answer, UpstreamRejected) for answer in answers):
            return None  # unreachable, failing or timing out: learned when the upstream answers
        return judge(separate, strict)


def _refused(answer: ProxyError | None) -> bool:
    """Whether a probe's answer is its template's refusal of the request."""
    return isinstance(answer, UpstreamRejected) and answer.status in REFUSALS
