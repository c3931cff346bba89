"""How the upstream's context window is shared: pure arithmetic, so it can be shown and tested.

One request holds, in this order, the snapshot, the working diff, the client's conversation and
the answer it asks for. The answer and the conversation get what a client needs to work (a share of
the window, capped: a 10M-token window does not need a million tokens of answer), the diff a share
that lasts between rebases, and the snapshot everything else. Each part can be set in tokens
(`[context] answer_tokens`, `conversation_tokens`, `diff_tokens`).

| window     | answer | conversation | diff    | snapshot  |
| ---------- | ------ | ------------ | ------- | --------- |
| 16,384     | 2,048  | 4,096        | 2,048   | 8,192     |
| 131,072    | 16,384 | 32,768       | 16,384  | 65,536    |
| 1,048,576  | 32,768 | 262,144      | 131,072 | 622,592   |
| 10,485,760 | 32,768 | 262,144      | 262,144 | 9,928,704 |
"""

from __future__ import annotations

import attrs

#: Each part's share of the window and its cap, when it is not set: (share, at most).
ANSWER = (1 / 8, 32_768)
CONVERSATION = (1 / 4, 262_144)
DIFF = (1 / 8, 262_144)


@attrs.frozen
class Split:
    """A window in tokens and its four parts; `snapshot` is 0 when the others take it all."""

    window: int
    answer: int
    conversation: int
    diff: int
    snapshot: int

    @property
    def client(self) -> int:
        """What a client may use of the window: its conversation and the answer."""
        return self.conversation + self.answer

    def describe(self) -> str:
        return (
            f"snapshot {self.snapshot:,}, diff {self.diff:,}, conversation {self.conversation:,}, "
            f"answer {self.answer:,} tokens"
        )


def client_room(parts: Split, snapshot_tokens: int | None) -> int:
    """The window left to a client's conversation and answer: all of it but the snapshot (as
    counted, at most its part; its part when not counted) and the diff's part."""
    taken = parts.snapshot if snapshot_tokens is None else min(snapshot_tokens, parts.snapshot)
    return max(0, parts.window - taken - parts.diff)


def _part(window: int, setting: int | None, default: tuple[float, int]) -> int:
    share, cap = default
    return setting if setting is not None else min(int(window * share), cap)


def split(window: int, answer: int | None = None, conversation: int | None = None, diff: int | None = None) -> Split:
    """Share `window` tokens: the parts set (None: their defaults), the snapshot what is left."""
    parts = (_part(window, answer, ANSWER), _part(window, conversation, CONVERSATION), _part(window, diff, DIFF))
    return Split(window, *parts, max(0, window - sum(parts)))


#: The rest of a prompt (diff, the client's JSON-encoded messages) counts less per byte than the
#: snapshot's text: its escapes and field names are bytes the template does not render as such...
REST_DISCOUNT = 0.75
#: ...and a prompt is refused before it is sent only when its estimate is past the window by this much.
REFUSE_OVER = 1.1


def too_long(window: int, snapshot_tokens: int, snapshot_bytes: int, rest_bytes: int) -> int | None:
    """The estimated tokens of a prompt that cannot fit `window`, or None when it may: a snapshot
    the upstream counted, and the rest of the prompt at the snapshot's bytes per token, discounted."""
    if snapshot_tokens <= 0 or snapshot_bytes <= 0:
        return None
    estimate = snapshot_tokens + round(rest_bytes * snapshot_tokens / snapshot_bytes * REST_DISCOUNT)
    return estimate if estimate > window * REFUSE_OVER else None
