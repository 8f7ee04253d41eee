"""How a request of each provider kind is sent: the URL, the headers and the body it becomes.

A *family* is one provider kind's adapter on the way out (its answers are read back by the
kind's row in ``protocol/answers.py``). The flight asks the provider's family for an
:class:`Outbound` and posts it; it never looks at the kind. Anthropic's API and
OpenAI-compatible servers are called directly with a key; Bedrock requests are signed with
SigV4 (``upstream/aws.py``), Vertex requests carry a Google access token (``upstream/gcp.py``),
Gemini requests are converted to ``generateContent`` (``protocol/convert/gemini_request.py``).
A family that holds credentials resolves and refreshes them off the Trio thread, and lists
what it sent in ``Outbound.secrets`` so that no relayed text can contain it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from trio_balancer.config import ProviderConfig
from trio_balancer.protocol.thinking import SignatureBook
from trio_balancer.upstream.fit import fit_request
from trio_balancer.upstream.headers import upstream_url
from trio_balancer.upstream.request import UpstreamRequest

__all__ = ["DirectFamily", "Family", "Outbound", "make_family"]


@attrs.frozen
class Outbound:
    """One call, ready to post."""

    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    model: str  # the model id the provider is asked for (a cloud's own id for the same model)
    secrets: tuple[str, ...] = ()  # credentials made for this call (a session token, an access token)
    changes: tuple[str, ...] = ()  # what fitting changed, for the debug log


class Family:
    """One provider's way of being called; the default is no state and no count endpoint."""

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider

    @property
    def counts_tokens(self) -> bool:
        """The provider has a count-tokens endpoint this family can call."""
        return self.provider.capabilities.count_tokens

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        raise NotImplementedError


class DirectFamily(Family):
    """Anthropic's API and servers speaking its format or OpenAI's: an API key, no signing."""

    @property
    def counts_tokens(self) -> bool:
        return self.provider.kind != "openai" and self.provider.capabilities.count_tokens

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        fitted = fit_request(self.provider, request, model, thinking=thinking)
        url = upstream_url(self.provider, request.path, request.query)
        return Outbound(url, fitted.headers, fitted.body, model, changes=fitted.changes)


_FAMILIES: Mapping[str, Callable[[ProviderConfig], Family]] = {
    "anthropic": DirectFamily,
    "openai": DirectFamily,
}


def make_family(provider: ProviderConfig) -> Family:
    return _FAMILIES[provider.kind](provider)
