"""Conversations keep their context: what changes between turns goes in where it happened."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scout_diff_cache.git.reader import RepositoryReader

from reconstruction import check_conversation
from support import FakeUpstream, GitRepo, ProxyFactory, Seen, answer_stream, is_warmup

AGENT = {"role": "system", "content": "You are a careful coding agent. " * 40}
FIRST = {"role": "user", "content": "What does main return?"}
ANSWER = {"role": "assistant", "content": "It returns 'hello'."}
SECOND = {"role": "user", "content": "And now?"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "edit", "arguments": "{}"}}],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "edited src/app.py"}


async def turn(client: TestClient, upstream: FakeUpstream, *messages: dict[str, Any]) -> tuple[Seen, str]:
    """Send one request; what the upstream received, and what the proxy said of the conversation."""
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": list(messages)})
    assert response.status == 200, await response.text()
    return [seen for seen in upstream.seen if not is_warmup(seen.json)][-1], response.headers["X-Scout-Conversation"]


def messages_prefix(seen: Seen) -> bytes:
    """The body up to the end of its messages array (string contents hold no unescaped quote)."""
    return seen.raw[: seen.raw.index(b'],"')]


def change_messages(seen: Seen) -> list[str]:
    return [m["content"] for m in seen.json["messages"][2:] if str(m.get("content")).startswith("# Work tree changes")]


async def test_an_edit_between_turns_goes_in_before_the_new_question_and_the_rest_stays(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    first, outcome = await turn(client, upstream, AGENT, FIRST)
    assert outcome == "new"
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    second, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)
    assert outcome == "continued"
    assert second.raw.startswith(messages_prefix(first))  # everything the upstream saw, byte for byte
    sent = second.json["messages"]
    assert sent[4:] == [ANSWER, sent[5], SECOND] and sent[5]["role"] == "system"
    (change,) = change_messages(second)
    assert "-    return 'hello'\n+    return 'edited'\n" in change
    check_conversation(sent, git_repo.path)


async def test_a_change_made_by_a_tool_call_goes_after_its_result(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'by the tool'\n")
    second, _ = await turn(client, upstream, AGENT, FIRST, CALL, RESULT)
    sent = second.json["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "system", "user", "assistant", "tool", "system"]
    assert sent[4:6] == [CALL, RESULT]  # nothing between a call and its result
    git_repo.write("src/util.py", "def add(a, b):\n    return a + b + 1\n")
    third, _ = await turn(client, upstream, AGENT, FIRST, CALL, RESULT, ANSWER, SECOND)
    assert third.raw.startswith(messages_prefix(second))
    assert len(change_messages(third)) == 2
    check_conversation(third.json["messages"], git_repo.path)


async def test_a_commit_between_turns_inserts_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    git_repo.write("src/app.py", "def main():\n    return 'work in progress'\n")
    first, _ = await turn(client, upstream, AGENT, FIRST)
    git_repo.commit("the work")
    second, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)
    assert outcome == "continued" and change_messages(second) == []
    assert second.raw.startswith(messages_prefix(first))
    check_conversation(second.json["messages"], git_repo.path)


async def test_concurrent_conversations_each_keep_their_own(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    other = {"role": "system", "content": "You review code."}
    last: dict[str, Seen] = {}
    for number in range(3):
        for name, system in (("agent", AGENT), ("reviewer", other)):
            history = [system, FIRST]
            for _ in range(number):
                history += [ANSWER, {"role": "user", "content": f"{name}, again"}]
            seen, outcome = await turn(client, upstream, *history)
            assert outcome == ("new" if number == 0 else "continued")
            if name in last:
                assert seen.raw.startswith(messages_prefix(last[name]))
            last[name] = seen
            check_conversation(seen.json["messages"], git_repo.path)
        git_repo.write(f"notes/{number}.txt", f"note {number}\n")


async def test_a_rewritten_history_continues_from_the_last_matching_message(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    await turn(client, upstream, AGENT, FIRST)
    regenerated = {"role": "assistant", "content": "A different answer."}
    _, outcome = await turn(client, upstream, AGENT, FIRST, regenerated, SECOND)
    assert outcome == "continued"  # nothing was inserted past the branch point: a fork
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)  # the change goes in before SECOND
    compacted = {"role": "user", "content": "Summary of the conversation so far, then: and now?"}
    seen, outcome = await turn(client, upstream, AGENT, compacted)
    assert outcome == "continued" and change_messages(seen)  # from the system prompt on, with the change
    check_conversation(seen.json["messages"], git_repo.path)
    rewritten = {"role": "assistant", "content": "An edited answer."}
    seen, outcome = await turn(client, upstream, AGENT, FIRST, rewritten, SECOND)
    assert outcome == "continued"  # forked before the change: shown from the start again
    check_conversation(seen.json["messages"], git_repo.path)


async def test_a_conversation_rewritten_past_an_inserted_change_starts_afresh(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND, ANSWER, {"role": "user", "content": "more"})
    seen, outcome = await turn(
        client, upstream, AGENT, FIRST, ANSWER, SECOND, ANSWER, {"role": "user", "content": "other"}
    )
    assert outcome == "continued"  # the change sits before the last question: kept
    seen, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, {"role": "user", "content": "instead"})
    assert outcome == "afresh" and change_messages(seen) == []
    assert "+    return 'edited'" in seen.json["messages"][1]["content"]  # the current diff, in front
    check_conversation(seen.json["messages"], git_repo.path)


async def test_the_least_recently_used_conversation_is_evicted(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"max_conversations": "1"})
    other = {"role": "system", "content": "You review code."}
    assert (await turn(client, upstream, AGENT, FIRST))[1] == "new"
    assert (await turn(client, upstream, other, FIRST))[1] == "new"
    assert (await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND))[1] == "new"  # it was evicted
    metrics = await (await client.get("/metrics")).text()
    assert 'scout_conversation_requests_total{outcome="evicted"} 2' in metrics
    assert "scout_conversations 1" in metrics


async def test_a_rebase_mid_conversation_keeps_the_conversations_epoch_while_it_is_remembered(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual"})
    first, _ = await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'committed'\n")
    git_repo.commit("change main")
    assert (await client.post("/admin/rebase")).status == 200
    second, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)
    assert outcome == "continued" and second.raw.startswith(messages_prefix(first))
    (change,) = change_messages(second)
    assert "+    return 'committed'" in change
    check_conversation(second.json["messages"], git_repo.path)
    new_conversation, _ = await turn(client, upstream, AGENT, {"role": "user", "content": "New topic."})
    assert new_conversation.json["messages"][0]["content"].endswith(f"commit {git_repo.head()} ===\n")


async def test_a_conversation_whose_epoch_is_no_longer_held_starts_afresh(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"rebase": "manual", "remembered_epochs": "0"})
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'committed'\n")
    git_repo.commit("change main")
    await client.post("/admin/rebase")
    seen, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)
    assert outcome == "afresh"
    assert seen.json["messages"][0]["content"].endswith(f"commit {git_repo.head()} ===\n")


async def test_changes_that_outgrow_the_budget_start_afresh(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(
        context={"rebase": "manual", "rebase_min_diff_bytes": "2KiB", "rebase_diff_share": "0.01"}
    )
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/big.py", "VALUE = 'a line that makes the change large'\n" * 100)
    seen, outcome = await turn(client, upstream, AGENT, FIRST)  # the same messages again, a retry say
    assert outcome == "afresh" and "src/big.py" in seen.json["messages"][1]["content"]
    git_repo.write("src/app.py", "def main():\n    return 'small'\n")
    again, outcome = await turn(client, upstream, AGENT, FIRST)
    assert outcome == "continued"  # the fresh start goes on: the one over budget is gone, not chosen again
    assert again.raw.startswith(messages_prefix(seen))


async def test_conversations_are_kept_per_client_key(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-of-one\nkey-of-two\n")
    client = await make_proxy(server={"api_keys_file": str(keys)})
    outcomes = []
    for key in ("key-of-one", "key-of-two", "key-of-one"):
        response = await client.post(
            "/v1/chat/completions", json={"messages": [AGENT, FIRST]}, headers={"Authorization": f"Bearer {key}"}
        )
        outcomes.append(response.headers["X-Scout-Conversation"])
    assert outcomes == ["new", "new", "continued"]


async def test_with_conversations_off_the_current_diff_leads_every_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"conversations": "off"})
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    seen, outcome = await turn(client, upstream, AGENT, FIRST, ANSWER, SECOND)
    assert outcome == "off" and change_messages(seen) == []
    assert "+    return 'edited'" in seen.json["messages"][1]["content"]


async def test_a_streamed_conversation_with_tools_gets_the_same_layout_and_its_fields_untouched(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    upstream.behaviour = answer_stream
    client = await make_proxy()
    tools = [{"type": "function", "function": {"name": "edit", "parameters": {"type": "object"}}}]
    for messages in ([AGENT, FIRST], [AGENT, FIRST, CALL, RESULT]):
        response = await client.post(
            "/v1/chat/completions", json={"messages": messages, "stream": True, "tools": tools}
        )
        assert response.status == 200 and b"data: [DONE]" in await response.read()
        git_repo.write("src/app.py", "def main():\n    return 'streamed'\n")
    body = upstream.seen[-1].json
    assert body["tools"] == tools and body["stream"] is True
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "system",
    ]
    check_conversation(body["messages"], git_repo.path)


async def test_placed_in_user_messages_a_change_opens_the_next_question_and_waits_for_one(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy(context={"change_placement": "user"})
    await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'by the tool'\n")
    waiting, _ = await turn(client, upstream, AGENT, FIRST, CALL, RESULT)  # no user message: not yet
    assert [m["role"] for m in waiting.json["messages"]] == ["system", "system", "system", "user", "assistant", "tool"]
    question = {"role": "user", "content": [{"type": "text", "text": "And now?"}]}
    seen, outcome = await turn(client, upstream, AGENT, FIRST, CALL, RESULT, question)
    assert outcome == "continued" and seen.raw.startswith(messages_prefix(waiting))
    sent = seen.json["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "system", "user", "assistant", "tool", "user"]
    opening, asked = sent[-1]["content"]
    assert opening["text"].startswith("# Work tree changes") and asked == question["content"][0]
    check_conversation(sent, git_repo.path)
    git_repo.write("src/util.py", "def add(a, b):\n    return a - b\n")
    later, _ = await turn(client, upstream, AGENT, FIRST, CALL, RESULT, question, ANSWER, SECOND)
    assert later.json["messages"][-1]["content"].startswith("# Work tree changes") and later.raw.startswith(
        messages_prefix(seen)
    )
    check_conversation(later.json["messages"], git_repo.path)


async def test_two_conversations_read_their_changes_at_the_same_time(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither waits for the other's read of the work tree: each read waits for the other to begin."""
    client = await make_proxy()
    other = {"role": "system", "content": "You review code."}
    await turn(client, upstream, AGENT, FIRST)
    await turn(client, upstream, other, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    both_reading = threading.Barrier(2, timeout=10)  # broken (an error) if the reads take turns
    read_changes = RepositoryReader.changes

    def changes(self: RepositoryReader, *args: Any) -> str | None:
        both_reading.wait()
        return read_changes(self, *args)

    monkeypatch.setattr(RepositoryReader, "changes", changes)
    asked = [[system, FIRST, ANSWER, SECOND] for system in (AGENT, other)]
    responses = await asyncio.wait_for(
        asyncio.gather(*(client.post("/v1/chat/completions", json={"model": "m", "messages": m}) for m in asked)),
        timeout=30,
    )
    assert [(r.status, r.headers["X-Scout-Conversation"]) for r in responses] == [(200, "continued")] * 2
    for seen in [seen for seen in upstream.seen if not is_warmup(seen.json)][-2:]:
        assert len(change_messages(seen)) == 1
        check_conversation(seen.json["messages"], git_repo.path)


async def test_concurrent_turns_of_one_conversation_insert_each_change_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    client = await make_proxy()
    first, _ = await turn(client, upstream, AGENT, FIRST)
    git_repo.write("src/app.py", "def main():\n    return 'edited'\n")
    history = [AGENT, FIRST, ANSWER, SECOND]
    responses = await asyncio.wait_for(
        asyncio.gather(
            *(client.post("/v1/chat/completions", json={"model": "m", "messages": history}) for _ in range(4))
        ),
        timeout=30,
    )
    assert [(r.status, r.headers["X-Scout-Conversation"]) for r in responses] == [(200, "continued")] * 4
    concurrent = [seen for seen in upstream.seen if not is_warmup(seen.json)][-4:]
    assert len({seen.raw for seen in concurrent}) == 1  # each turn got the same bytes: the change once
    assert concurrent[0].raw.startswith(messages_prefix(first))
    (change,) = change_messages(concurrent[0])
    assert "+    return 'edited'\n" in change
    check_conversation(concurrent[0].json["messages"], git_repo.path)
    git_repo.write("src/util.py", "def add(a, b):\n    return a + b + 1\n")
    third, outcome = await turn(client, upstream, *history, ANSWER, {"role": "user", "content": "And then?"})
    assert outcome == "continued" and third.raw.startswith(messages_prefix(concurrent[0]))
    assert len(change_messages(third)) == 2
    check_conversation(third.json["messages"], git_repo.path)
