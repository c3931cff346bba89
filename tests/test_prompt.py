"""Splicing the upstream body from encoded parts gives exactly what encoding the whole would."""

from __future__ import annotations

import json

from scout_diff_cache.apis.assembly import assemble, system_message
from scout_diff_cache.apis.chat import parse_chat_request
from scout_diff_cache.apis.validation import RequestRules
from scout_diff_cache.encoding import encode_json, encode_text


def test_a_message_encoded_in_parts_equals_the_whole_encoded_at_once() -> None:
    parts = ['quote " backslash \\ ', "ümlaut\n", "\u2028 line separator", "", "\x00 control", "😀"]
    assert system_message(*parts) == encode_json({"role": "system", "content": "".join(parts)})


def test_text_is_encoded_as_json_encodes_it() -> None:
    """The fast path (only quotes, backslashes, line feeds and tabs to escape) and the rest alike."""
    texts = [chr(code) for code in range(160)] + ["", 'a\tb\n"c" \\d', "ümlaut \u2028 😀\n", "x\r\n", "\x7f\x1b[0m"]
    texts += ["".join(texts), "".join(map(chr, range(32, 160))) + "\t\n"]  # with rare controls, and without
    for text in texts:
        assert encode_text(text) == encode_json(text)[1:-1], text


def test_the_spliced_body_is_the_json_a_client_would_expect() -> None:
    raw = json.dumps({"model": "m", "temperature": 0.5, "messages": [{"role": "user", "content": "hi ü"}]}).encode()
    chat = parse_chat_request(raw, RequestRules("default"))
    snapshot = system_message("snapshot")
    body = assemble(b",".join(chat.parts), chat.fields, snapshot, system_message("diff"))
    spliced = b"".join(body.chunks)
    assert len(spliced) == body.length
    assert json.loads(spliced) == {
        "messages": [
            {"role": "system", "content": "snapshot"},
            {"role": "system", "content": "diff"},
            {"role": "user", "content": "hi ü"},
        ],
        "model": "m",
        "temperature": 0.5,
    }
    assert body.chunks[1] is snapshot  # spliced as given, never copied or re-encoded
