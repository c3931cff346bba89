"""Finding the replica that holds this repository's cache, behind a router.

A team's model servers often sit behind a router (vllm-router, smg, llm-d, Dynamo). A router that
hashes a session key keeps a repository's requests on one replica only if every request carries
the same key: one per repository, the same in every clone and across rebases (the name from
`repository_key`), never per request, never random, never a client's credentials. It goes in
every upstream request (chat, warm-ups, keep-alive pings) under the headers `[upstream]
routing_key_headers` names; a session token a router hands out (`x-session-token`, llm-d's session
affinity) is sent back on later requests.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..config import UpstreamConfig

SESSION_TOKEN = "x-session-token"


@attrs.define
class Routing:
    """This repository's routing key, and the session token a router gave it, if any."""

    key: str | None = None
    session_token: str | None = None

    def headers(self, config: UpstreamConfig) -> dict[str, str]:
        headers = {}
        if self.key is not None and config.routing_key == "auto":
            headers = dict.fromkeys(config.routing_key_headers, self.key)
        if self.session_token is not None:
            headers[SESSION_TOKEN] = self.session_token
        return headers

    def remember(self, answer_headers: Mapping[str, str]) -> None:
        """Keep a session token the upstream (or a router before it) handed out."""
        token = answer_headers.get(SESSION_TOKEN)
        if token:
            self.session_token = token
