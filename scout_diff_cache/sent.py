"""What a request sent upstream, as the diagnosis reads it (`diagnosis.Prompt`): its elements in
the order of their regions, and the few redacted bytes around a break the status page may show."""

from __future__ import annotations

import json
from collections.abc import Iterator

from .apis.validation import ClientRequest
from .context.conversations import Prepared
from .diagnosis import Element, Prompt
from .encoding import encode_json
from .git.diff import WorkingDiff
from .git.secrets import matches
from .git.snapshot import Snapshot

#: Characters shown on each side of a break, and read on each side for the secret rules (a
#: secret cut in half by the excerpt must still be recognised).
RADIUS = 12
CONTEXT = 256
#: Roles of the messages that are the client's system prompt when they lead the conversation.
SYSTEM_ROLES = ("system", "developer")


def context_elements(snapshot: Snapshot, start: bytes) -> tuple[Element, ...]:
    """The proxy's part: the snapshot (by its commit) and the working diff as encoded."""
    commit = (snapshot.commit or "none").encode()
    return (
        Element("snapshot", "snapshot", commit, snapshot.text_bytes, opaque=True),
        Element("diff", "working diff", start, len(start)),
    )


def warmed_prompt(snapshot: Snapshot, diff: WorkingDiff) -> Prompt:
    """What a warm-up sends: the context alone."""
    return Prompt(context_elements(snapshot, diff.json_text))


def sent_prompt(client: ClientRequest, prepared: Prepared | None) -> Prompt:
    """The request's elements as the upstream renders them: the snapshot, the client's own system
    text (Responses' instructions, Messages' system: the snapshot's neighbours there), the working
    diff, the client's leading system messages (chat), its tools, then its messages as sent, the
    run after the last assistant message being the new turn. A change a conversation inserted as
    a message of its own is the working diff's, where it stands."""
    elements = _system_blocks(client.system)
    if prepared is not None:
        snapshot, diff = context_elements(prepared.snapshot, prepared.start)
        elements = [snapshot, *elements, diff]
    shapes = client.shapes
    leading = next((index for index, shape in enumerate(shapes) if shape not in SYSTEM_ROLES), len(shapes))
    answered = max((index for index, shape in enumerate(shapes) if shape.startswith("assistant")), default=-1)
    turn = max(leading, answered + 1 if answered + 1 < len(shapes) else answered)
    messages = []
    for index, part, own in _messages(client.parts, prepared.parts if prepared else client.parts):
        if not own:
            messages.append(Element("diff", f"change before messages[{index}]", part, len(part)))
            continue
        region = "system" if index < leading else "turn" if index >= turn else "history"
        messages.append(Element(region, f"messages[{index}]", part, len(part)))
    tools = json.loads(b"{" + client.fields + b"}").get("tools")
    encoded = [encode_json(tool) for tool in tools] if isinstance(tools, list) else []
    listed = [Element("system", f"tools[{index}]", tool, len(tool)) for index, tool in enumerate(encoded)]
    return Prompt((*elements, *messages[:leading], *listed, *messages[leading:]))


def _messages(own: tuple[bytes, ...], sent: tuple[bytes, ...]) -> Iterator[tuple[int, bytes, bool]]:
    """The messages `sent`, each with the index of the client's message it is (with a change
    attached, perhaps) and whether it is one, or the index of the message before which a change
    was inserted as a message of its own."""
    index = 0
    for position, part in enumerate(sent):
        inserted = index >= len(own) or (
            part != own[index] and position + 1 < len(sent) and sent[position + 1] == own[index]
        )
        yield index, part, not inserted
        index += not inserted


def _system_blocks(system: bytes) -> list[Element]:
    """The client's own system text: Messages' blocks one by one, or one string."""
    if not system:
        return []
    if not system.startswith(b"["):
        return [Element("system", "system", system, len(system))]
    blocks = [encode_json(block) for block in json.loads(system)]
    return [Element("system", f"system[{index}]", block, len(block)) for index, block in enumerate(blocks)]


def excerpt(data: bytes, offset: int) -> str:
    """The text around byte `offset` of `data`, `RADIUS` characters each side, any secret the
    redaction rules find near it masked (as `[REDACTED:rule]`)."""
    head = data[max(0, offset - CONTEXT) : offset].decode("utf-8", "replace")
    tail = data[offset : offset + CONTEXT].decode("utf-8", "replace")
    text, centre = head + tail, len(head)
    low, high = max(0, centre - RADIUS), min(len(text), centre + RADIUS)
    out, position = [], low
    for start, _, end, rule in sorted(matches("", text)):
        if end <= position or start >= high:
            continue
        out += [text[position : max(position, start)], f"[REDACTED:{rule}]"]
        position = min(max(position, end), high)
    out.append(text[position:high])
    return "".join(out)
