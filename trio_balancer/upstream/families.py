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

import math
from collections.abc import Callable, Mapping

import attrs

from trio_balancer.config import ProviderConfig
from trio_balancer.protocol.bedrock import (
    EVENT_STREAM_TYPE,
    bedrock_body,
    bedrock_count_body,
    bedrock_count_path,
    bedrock_path,
)
from trio_balancer.protocol.cloud_models import bedrock_base_id, bedrock_model_id, vertex_model_id
from trio_balancer.protocol.convert.gemini_request import to_gemini
from trio_balancer.protocol.events import dumps
from trio_balancer.protocol.features import beta_flags
from trio_balancer.protocol.gemini import gemini_count_body, gemini_count_path, gemini_model_id, gemini_path
from trio_balancer.protocol.thinking import SignatureBook
from trio_balancer.protocol.vertex import vertex_body, vertex_count_path, vertex_path
from trio_balancer.upstream.aws import AwsSigner
from trio_balancer.upstream.fit import fit_payload, fit_request
from trio_balancer.upstream.gcp import GoogleTokenSource
from trio_balancer.upstream.headers import upstream_url, with_overrides
from trio_balancer.upstream.request import UpstreamRequest

__all__ = [
    "AnthropicFamily",
    "BedrockFamily",
    "Family",
    "GeminiFamily",
    "OpenAIFamily",
    "Outbound",
    "VertexFamily",
    "make_family",
]

_JSON = b"application/json"
TOKEN_ANSWER_S = 10.0  # a token endpoint answers in well under a second


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


class AnthropicFamily(Family):
    """Anthropic's API and servers speaking its format: an API key, no signing; the body is
    the client's (fitted to what the provider takes)."""

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        fitted = fit_request(self.provider, request, model, thinking=thinking)
        url = upstream_url(self.provider, request.path, request.query)
        return Outbound(url, fitted.headers, fitted.body, model, changes=fitted.changes)


class OpenAIFamily(AnthropicFamily):
    """OpenAI-compatible servers: sent like Anthropic's (``fit_request`` converts the body and
    the headers for the kind), and they have no count endpoint."""

    @property
    def counts_tokens(self) -> bool:
        return False


class BedrockFamily(Family):
    """Claude on Bedrock: the Anthropic body in Bedrock's envelope, signed with SigV4.

    Only ``content-type`` and ``accept`` are sent besides the signature (and the provider's
    own ``headers``): Bedrock reads nothing else, and everything sent is signed.
    """

    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        assert provider.region is not None  # the config requires it for this kind
        self._signer = AwsSigner(provider.name, provider.region, provider.profile)

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        provider = self.provider
        fitted = fit_payload(provider, request, thinking=thinking)
        betas = beta_flags(fitted.headers)
        if request.counts_tokens:
            # CountTokens counts an InvokeModel body, which needs max_tokens; on the base model.
            model_id = bedrock_base_id(model)
            invoke = bedrock_body({"max_tokens": 1, **fitted.payload}, betas)
            body, path, accept = bedrock_count_body(invoke), bedrock_count_path(model_id), _JSON
        else:
            model_id = bedrock_model_id(model, provider.inference_profile)
            body = bedrock_body(fitted.payload, betas)
            path = bedrock_path(model_id, stream=request.stream)
            accept = EVENT_STREAM_TYPE.encode() if request.stream else _JSON
        url = provider.base_url + path
        headers = with_overrides([(b"content-type", _JSON), (b"accept", accept)], provider.headers)
        signed, secrets = await self._signer.sign("POST", url, headers, body)
        return Outbound(url, signed, body, model_id, secrets, fitted.changes)


class VertexFamily(Family):
    """Claude on Vertex AI: the Anthropic body without its model, a Google access token."""

    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self._tokens = GoogleTokenSource(
            provider.name, provider.service_account_file, deadline=_token_deadline(provider)
        )

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        provider = self.provider
        assert provider.project is not None and provider.region is not None  # required by the config
        fitted = fit_payload(provider, request, thinking=thinking)
        model_id = vertex_model_id(model)
        if request.counts_tokens:
            payload = {**fitted.payload, "model": model_id}
            body = vertex_body(payload, keep_model=True)
            path = vertex_count_path(provider.project, provider.region)
        else:
            body = vertex_body(fitted.payload)
            path = vertex_path(provider.project, provider.region, model_id, stream=request.stream)
        token = await self._tokens.token()
        headers = [(n, v) for n, v in fitted.headers if n not in (b"content-type", b"authorization")]
        headers += [(b"content-type", _JSON), (b"authorization", b"Bearer " + token.encode())]
        return Outbound(provider.base_url + path, headers, body, model_id, (token,), fitted.changes)


class GeminiFamily(Family):
    """Gemini's own API: the request converted to ``generateContent``, an API key header.

    Fitted first like any provider (features Gemini lacks dropped, system messages folded,
    text documents as text), then converted (``protocol/convert/gemini_request.py``), which
    keeps only the thinking blocks Gemini signed itself: no signature book is needed.
    """

    async def outbound(
        self, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
    ) -> Outbound:
        provider = self.provider
        fitted = fit_payload(provider, request)
        converted = to_gemini(fitted.payload)
        model_id = gemini_model_id(model)
        if request.counts_tokens:
            body, path, accept = (
                gemini_count_body(converted.body, model_id),
                gemini_count_path(model_id),
                _JSON,
            )
        else:
            body, path = dumps(converted.body).encode(), gemini_path(model_id, stream=request.stream)
            accept = b"text/event-stream" if request.stream else _JSON
        own = [(b"content-type", _JSON), (b"accept", accept), (b"x-goog-api-key", self._key(request))]
        headers = with_overrides(own, provider.headers)
        changes = (*fitted.changes, *(f"dropped {f}" for f in converted.dropped))
        return Outbound(provider.base_url + path, headers, body, model_id, changes=changes)

    def _key(self, request: UpstreamRequest) -> bytes:
        """The operator's key, or with ``passthrough`` the client's own (as ``x-api-key``,
        or a bearer token: Claude Code sends either)."""
        if not self.provider.passthrough:
            return (self.provider.api_key or "").encode()
        for name, value in request.headers:
            if name == b"x-api-key":
                return value
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:]
        return b""


def _token_deadline(provider: ProviderConfig) -> float:
    """How long a request waits for a Google token: a connect and a short answer, within
    the provider's whole-response deadline."""
    timeouts = provider.timeouts
    return min(timeouts.connect + TOKEN_ANSWER_S, timeouts.total or math.inf)


_FAMILIES: Mapping[str, Callable[[ProviderConfig], Family]] = {
    "anthropic": AnthropicFamily,
    "openai": OpenAIFamily,
    "bedrock": BedrockFamily,
    "vertex": VertexFamily,
    "gemini": GeminiFamily,
}


def make_family(provider: ProviderConfig) -> Family:
    return _FAMILIES[provider.kind](provider)
