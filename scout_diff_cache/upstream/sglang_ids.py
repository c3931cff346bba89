"""SGLang's way to take a chat prompt as token ids: `/v1/chat/completions` with `input_ids`.

As read in SGLang's source (README, "Token-id prompts"): a chat request's `input_ids`, when given,
are its prompt as they are (the messages are not rendered; they still give the tool-call constraint,
and the tool and reasoning parsers still read the answer, which is chat's own), and `/tokenize` with
`messages` renders and tokenises a chat body through the same code as chat. So the request is split
and its epoch's ids learned as on vLLM; only the field that carries them differs. Unknown fields are
ignored, not refused, so two things are checked once, before any request goes as ids: that chat
takes `input_ids` at all (a server that predates them would answer a prompt holding the marker
instead of the snapshot), and that the model reads text only (for one that reads images or audio,
SGLang drops the media of a request with `input_ids`, and its chat tokenises the text otherwise).
"""

from __future__ import annotations

from array import array

from ..encoding import Body, encode_json
from .client import Upstream, url_of
from .id_routes import MARKER, NoIdsRoute, Split, VllmChat
from .tokenizer import tokens


class SglangChat(VllmChat):
    """SGLang: rendered and tokenised by `/tokenize` with `messages` (as on vLLM), sent to
    `/v1/chat/completions` with every id in `input_ids`."""

    FIELD, OPENING, CLOSING = "input_ids", b',"input_ids":[', b"]}"

    def __init__(self) -> None:
        super().__init__()
        self._checked = False

    async def split(self, upstream: Upstream, marked: Body) -> Split | None:
        found = await super().split(upstream, marked)
        if not self._checked:
            assert self._marker is not None  # learned by the split
            await _check(upstream, self._marker)
            self._checked = True
        return found


async def _check(upstream: Upstream, marker: array[int]) -> None:
    """Raise NoIdsRoute unless this server's chat takes `input_ids` and its model reads text only.

    `/tokenize` with `messages` goes through chat's own request and rendering, its other fields
    included: given `input_ids`, it answers them back only where chat would take them as the prompt.
    """
    config = upstream.config
    probe = {"model": config.model, "messages": [{"role": "user", "content": MARKER}], "input_ids": list(marker)}
    if await tokens(upstream, Body((encode_json(probe),))) != marker:
        raise NoIdsRoute("its chat completions ignore input_ids (an SGLang from before they were added)")
    info = await upstream.about("GET", url_of(config, "/model_info", root=True))
    if not isinstance(info, dict):
        info = await upstream.about("GET", url_of(config, "/get_model_info", root=True))
    media = ("has_image_understanding", "has_audio_understanding")
    if not isinstance(info, dict) or any(info.get(name) is not False for name in media):
        raise NoIdsRoute("its /model_info does not say the model reads text only")
