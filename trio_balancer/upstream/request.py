"""What a client asked for, parsed once and ready for any provider (``fit.py`` makes it fit one).

The credentials a request carries upstream are listed here too, since no text relayed back
may contain them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from trio_balancer.config import ProviderConfig
from trio_balancer.protocol.features import Need

__all__ = ["SESSION_HEADER", "UpstreamRequest", "secrets_sent"]

SESSION_HEADER = b"x-claude-code-session-id"
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


@attrs.frozen
class UpstreamRequest:
    """What the client asked for, ready to be sent to any provider."""

    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool
    # What the request cannot lose (server tools, MCP, documents...): found once, at parse.
    needs: tuple[Need, ...] = ()
    client: str = ""  # who sent it (a client key's name or identity): sessions are theirs

    @property
    def counts_tokens(self) -> bool:
        """A ``count_tokens`` request: counted, never run (so it needs nothing and moves nothing)."""
        return self.path == COUNT_TOKENS_PATH

    def body_for(self, model: str) -> bytes:
        """The body to send upstream: the client's own bytes unless the model is renamed."""
        if model == self.model:
            return self.body
        return json.dumps({**self.payload, "model": model}, ensure_ascii=False).encode()

    @property
    def session(self) -> str | None:
        """The sticky-session key: Claude Code's ``X-Claude-Code-Session-Id`` header when sent
        (one conversation, as its gateway documentation says), else ``metadata.user_id``.

        Each kind has its own prefix, so one cannot stand for the other, and the key is the
        client's: another client naming the same session id has a session of its own, and
        cannot move this one. Like ``user_id``, the key lives only in the router's memory: it
        is never logged nor recorded.
        """
        for name, value in self.headers:
            if name == SESSION_HEADER and (sid := value.strip()):
                return f"{self.client}\x00session:" + sid.decode("latin-1")
        metadata = self.payload.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return f"{self.client}\x00user:" + user if isinstance(user, str) and user else None


def secrets_sent(provider: ProviderConfig, request: UpstreamRequest) -> list[str]:
    """Every credential this request sends ``provider``: what no relayed text may contain."""
    sent = [provider.api_key or "", *provider.headers.values()]
    if provider.passthrough:
        for name, value in request.headers:
            if name in (b"x-api-key", b"authorization"):
                text = value.decode("latin-1")
                sent += [text, text.removeprefix("Bearer ").removeprefix("bearer ")]
    return [s for s in sent if s]
