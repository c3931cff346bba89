"""Whether the upstream cut the prompt it was sent: Ollama's OpenAI-compatible routes answer an
over-long prompt with 200 after dropping its front (ollama#5902), which is the snapshot.

Nothing in such an answer says so but its usage: the prompt tokens it reports are far fewer than
the text sent can make. No tokenizer packs more than a few bytes of text into a token (code runs
2.5 to 4.5, long runs of spaces more), so a prompt reported at more than `MAX_BYTES_PER_TOKEN`
bytes a token lost part of its text; where the snapshot's tokens were counted by the upstream's
own tokenizer, reporting fewer than those is enough.
"""

from __future__ import annotations

#: Bytes of text per reported prompt token beyond which the prompt cannot have arrived whole.
MAX_BYTES_PER_TOKEN = 12
#: Slack on the snapshot's own count (templates and tokenizers differ a little at the seams).
COUNTED_SLACK = 0.9


def truncated(sent_bytes: int, prompt_tokens: int | None, snapshot_tokens: int | None = None) -> bool:
    """Whether a prompt of `sent_bytes` bytes of text, holding a snapshot the upstream counted
    at `snapshot_tokens`, cannot be what it reports as `prompt_tokens`."""
    if not prompt_tokens:
        return False
    if snapshot_tokens is not None and prompt_tokens < snapshot_tokens * COUNTED_SLACK:
        return True
    return sent_bytes > prompt_tokens * MAX_BYTES_PER_TOKEN


def describe(sent_bytes: int, prompt_tokens: int, window: int | None) -> str:
    """What a user is told: what was sent, what arrived, and what to do."""
    loaded = f" (its window is {window:,} tokens)" if window else ""
    return (
        f"the upstream cut the prompt: {sent_bytes:,} bytes of text were sent and it read {prompt_tokens:,} tokens"
        f"{loaded}; the model did not see the whole repository. Give it a larger context (Ollama: "
        "OLLAMA_CONTEXT_LENGTH, or num_ctx) or set [upstream] context_window to what it loads"
    )
