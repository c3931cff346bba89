"""The diagnosis over recorded request pairs: where each prompt's cached prefix ended, and why."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from scout_diff_cache.apis.dialects import CHAT, MESSAGES, Dialect
from scout_diff_cache.apis.validation import RequestRules
from scout_diff_cache.context.conversations import Prepared
from scout_diff_cache.diagnosis import Diagnosis, Earlier, Prompt, diagnose, diverge, tokens_at
from scout_diff_cache.encoding import encode_json
from scout_diff_cache.git.snapshot import Snapshot
from scout_diff_cache.sent import excerpt, sent_prompt

#: Claude Code's first system block: its version suffix follows each conversation's first prompt.
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.{}; cc_entrypoint=sdk-cli;"
SYSTEM = "You are an interactive CLI tool that helps users with software engineering tasks."
TOOLS = [
    {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}},
]


def prompt(
    body: dict[str, Any], api: Dialect = CHAT, commit: str = "a" * 40, diff: bytes = b"diff --git a/x b/x"
) -> Prompt:
    """What the proxy sends for `body`: a 40,000-byte snapshot of `commit`, the diff, the client's part."""
    client = api.parse(json.dumps(body).encode(), RequestRules("scout", drop_billing_header=False))
    snapshot = cast(Snapshot, SimpleNamespace(commit=commit, text_bytes=40_000))
    return sent_prompt(client, Prepared(snapshot, diff, len(diff), client.parts, "new", 0))


def figures(sent: Prompt, upto: int) -> tuple[int, int]:
    """(prompt, cached) tokens as an upstream at 4 bytes a token reports them, cached up to byte `upto`."""
    return sent.size // 4, upto // 4


def the(sent: Prompt, earlier: Prompt, cached_upto: int, against: str = "this client's request") -> Diagnosis:
    return diagnose(sent, Earlier(earlier, against, own=True), *figures(sent, cached_upto), excerpt)


def claude(nonce: str, question: str) -> dict[str, Any]:
    system = [{"type": "text", "text": BILLING.format(nonce)}, {"type": "text", "text": SYSTEM}]
    return {"max_tokens": 10, "system": system, "messages": [{"role": "user", "content": question}]}


def test_a_nonce_in_system_0_breaks_the_prefix_in_the_system_prompt_at_its_byte() -> None:
    first, second = prompt(claude("ed9", "hi"), MESSAGES), prompt(claude("3f1", "hello"), MESSAGES)
    found = diverge(second, first, excerpt)
    diagnosis = the(second, first, found.shared)
    assert (diagnosis.cause, diagnosis.broke, diagnosis.label) == ("changed", "system", "system[0]")
    assert [element.label for element in second.elements[:3]] == ["snapshot", "system[0]", "system[1]"]
    assert diagnosis.offset == len(encode_json({"type": "text", "text": BILLING.split("{")[0]})) - 2
    assert diagnosis.region == "system"
    assert "ed9" in diagnosis.before and "3f1" in diagnosis.now
    assert diagnosis.explain().startswith("system[0] differs from this client's request at byte ")
    assert "break=system differs=system[0]@" in diagnosis.describe()


def test_a_reordered_tool_list_breaks_in_the_system_prompt_and_tools() -> None:
    question = {"role": "user", "content": "fix it"}
    first = prompt({"messages": [question], "tools": TOOLS})
    second = prompt({"messages": [question], "tools": TOOLS[::-1]})
    diagnosis = the(second, first, diverge(second, first, excerpt).shared)
    assert (diagnosis.cause, diagnosis.broke, diagnosis.label) == ("changed", "system", "tools[0]")
    assert diagnosis.offset == len('{"type":"function","function":{"name":"')
    assert "read" in diagnosis.before and "write" in diagnosis.now


def test_an_edited_earlier_message_breaks_in_the_history() -> None:
    turns = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What does main do?"},
        {"role": "assistant", "content": "It prints hello."},
    ]
    first = prompt({"messages": turns})
    edited = [
        turns[0],
        {"role": "user", "content": "What does util do?"},
        turns[2],
        {"role": "user", "content": "And?"},
    ]
    second = prompt({"messages": edited})
    diagnosis = the(second, first, diverge(second, first, excerpt).shared)
    assert (diagnosis.cause, diagnosis.broke, diagnosis.label) == ("changed", "history", "messages[1]")
    assert diagnosis.offset == len('{"role":"user","content":"What does ')
    assert (diagnosis.before, diagnosis.now) == (':"What does main do?"}', ':"What does util do?"}')


def test_a_growing_conversation_is_cached_as_expected_to_its_new_turn() -> None:
    turns = [{"role": "user", "content": "What does main do?"}]
    first = prompt({"messages": turns})
    turns += [{"role": "assistant", "content": "It prints hello."}, {"role": "user", "content": "Why?"}]
    second = prompt({"messages": turns})
    diagnosis = the(second, first, first.size)
    assert (diagnosis.cause, diagnosis.broke, diagnosis.region) == ("hit", None, "history")
    assert diagnosis.split() == (first.size // 4, 0, second.size // 4 - first.size // 4)
    assert not diagnosis.is_break


def test_a_rebase_breaks_in_the_snapshot_and_its_warm_up_does_not() -> None:
    question = {"messages": [{"role": "user", "content": "Where is main?"}]}
    before, after = prompt(question), prompt(question, commit="b" * 40)
    diagnosis = the(after, before, 10_000)  # the new snapshot shares its first files with the old
    assert (diagnosis.cause, diagnosis.broke, diagnosis.label, diagnosis.offset) == (
        "changed",
        "snapshot",
        "snapshot",
        None,
    )
    assert diagnosis.before == diagnosis.now == ""  # the snapshot is never quoted
    warmed = Prompt(after.elements[:2])
    assert the(after, warmed, warmed.size, "the warm-up").cause == "hit"


def test_a_cold_upstream_recomputes_what_it_was_expected_to_hold() -> None:
    turns = [{"role": "user", "content": "What does main do?"}]
    first = prompt({"messages": turns})
    second = prompt({"messages": [*turns, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]})
    diagnosis = the(second, first, 0)
    assert (diagnosis.cause, diagnosis.broke, diagnosis.region) == ("cold", "snapshot", "snapshot")
    cached, recomputed, new = diagnosis.split()
    assert cached == 0 and recomputed == tokens_at(first.size, second, second.size // 4) and new > 0
    assert diagnosis.explain().startswith(f"the upstream computed {recomputed:,} tokens again")


def test_a_shortfall_within_a_cache_block_is_no_break() -> None:
    turns = [{"role": "user", "content": "What does main do?"}]
    first = prompt({"messages": turns})
    second = prompt({"messages": [*turns, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]})
    assert the(second, first, first.size - 400).cause == "hit"  # 100 tokens short: one vLLM block on CPU


def test_a_first_request_has_nothing_to_expect() -> None:
    sent = prompt({"messages": [{"role": "user", "content": "hi"}]})
    diagnosis = diagnose(sent, None, sent.size // 4, 0, excerpt)
    assert (diagnosis.cause, diagnosis.expected_tokens, diagnosis.region) == ("new", 0, "snapshot")


def test_without_cache_figures_a_change_is_still_named() -> None:
    first, second = prompt(claude("ed9", "hi"), MESSAGES), prompt(claude("3f1", "hi"), MESSAGES)
    assert diagnose(second, Earlier(first, "x", own=True), 100, None, excerpt).cause == "changed"
    assert diagnose(first, Earlier(first, "x", own=True), None, None, excerpt).cause == "unknown"


def test_the_new_turn_is_what_follows_the_last_answer() -> None:
    sent = prompt(
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "tool", "content": "c", "tool_call_id": "1"},
                {"role": "user", "content": "d"},
            ]
        }
    )
    regions = [(element.label, element.region) for element in sent.elements[2:]]
    assert regions == [
        ("messages[0]", "system"),
        ("messages[1]", "history"),
        ("messages[2]", "history"),
        ("messages[3]", "turn"),
        ("messages[4]", "turn"),
    ]


def test_a_secret_near_a_break_is_masked_in_the_excerpt() -> None:
    data = ('{"content":"deploy with AKIA' + "C" * 16 + ' now"}').encode()
    shown = excerpt(data, data.index(b"AKIA") + 6)
    assert "AKIA" not in shown and "CCCC" not in shown and "[REDACTED:" in shown
    assert excerpt(b"plain text here", 5) == "plain text here"


def test_another_clients_system_prompt_is_no_break_of_this_ones() -> None:
    first, second = prompt(claude("ed9", "hi"), MESSAGES), prompt(claude("3f1", "hello"), MESSAGES)
    cached = figures(second, diverge(second, first, excerpt).shared)
    diagnosis = diagnose(second, Earlier(first, "a messages request of key 2"), *cached, excerpt)
    assert (diagnosis.cause, diagnosis.broke) == ("hit", None) and diagnosis.split()[1] <= 1  # rounding


def test_a_change_a_conversation_inserted_is_the_working_diffs() -> None:
    body = {"messages": turns_of("a", "b", "c")}
    client = CHAT.parse(json.dumps(body).encode(), RequestRules("scout"))
    change = b'{"role":"system","content":"src/app.py changed"}'
    parts = (*client.parts[:2], change, client.parts[2])
    snapshot = cast(Snapshot, SimpleNamespace(commit="a" * 40, text_bytes=40_000))
    sent = sent_prompt(client, Prepared(snapshot, b"diff", 4, parts, "continued", 0))
    assert [(element.label, element.region) for element in sent.elements[2:]] == [
        ("messages[0]", "history"),
        ("messages[1]", "history"),
        ("change before messages[2]", "diff"),
        ("messages[2]", "turn"),
    ]


def turns_of(*texts: str) -> list[dict[str, str]]:
    """User and assistant taking turns, the user first."""
    return [{"role": ("user", "assistant")[index % 2], "content": text} for index, text in enumerate(texts)]
