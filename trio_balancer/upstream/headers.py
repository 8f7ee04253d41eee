"""Which headers cross the proxy in each direction, and the URL a request goes to.

Pure functions, so they can be tested exhaustively; the HTTP clients are in :mod:`.providers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trio_balancer.config import ProviderConfig

__all__ = [
    "HOP_BY_HOP",
    "request_headers",
    "response_headers",
    "upstream_url",
    "with_overrides",
]

# RFC 9110 section 7.6.1, plus headers that describe one hop's framing or that httpx must set.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})
# Never forwarded upstream: cookies belong to the balancer's origin, a browser's Origin and
# Referer say which page called (none of the provider's business), our own control headers
# mean nothing to a provider, and we ask for identity encoding ourselves (below).
_DROP_TO_UPSTREAM = HOP_BY_HOP | {"cookie", "origin", "referer", "accept-encoding"}
# Hypercorn writes its own date and server headers; duplicates confuse some clients.
_DROP_TO_CLIENT = HOP_BY_HOP | {"date", "server", "set-cookie", "alt-svc"}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def request_headers(
    client_headers: Iterable[tuple[bytes, bytes]], provider: ProviderConfig
) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream, as bytes: a client's header may hold any latin-1 byte, which
    httpx would refuse to re-encode from text as ASCII (found by fuzzing)."""
    return [(n.encode("latin-1"), _encode(v)) for n, v in _request_headers(client_headers, provider)]


def _encode(value: str) -> bytes:
    try:
        return value.encode("latin-1")  # a client's bytes, decoded as latin-1: back exactly
    except UnicodeEncodeError:
        return value.encode("utf-8")  # a value from the config


def _request_headers(
    client_headers: Iterable[tuple[bytes, bytes]], provider: ProviderConfig
) -> list[tuple[str, str]]:
    """Headers to send upstream for a client request.

    Everything the client sent crosses (Anthropic version and beta flags, Claude Code's
    ``x-app`` and user agent, the SDK's ``x-stainless-*``) except hop-by-hop headers, our own
    ``x-balancer-*`` controls, and the client's credentials, which only reach a provider
    configured as ``passthrough``. A provider with its own key gets that key instead.
    """
    decoded = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in client_headers]
    if provider.kind == "openai":
        return _openai_headers(decoded, provider)
    drop = _DROP_TO_UPSTREAM | _connection_tokens(decoded)
    if not provider.passthrough:
        drop = drop | CREDENTIAL_HEADERS
    out = [(n, v) for n, v in decoded if n not in drop and not n.startswith("x-balancer-")]
    if not provider.passthrough and provider.api_key is not None:
        if provider.auth == "bearer":
            out.append(("authorization", f"Bearer {provider.api_key}"))
        else:
            out.append(("x-api-key", provider.api_key))
    out = _overridden(out, provider.headers)
    # Plain bytes from the provider: passthrough stays byte-exact and usage stays readable.
    out.append(("accept-encoding", "identity"))
    return out


def _openai_headers(client: list[tuple[str, str]], provider: ProviderConfig) -> list[tuple[str, str]]:
    """An OpenAI-compatible server gets a request of its own kind, not Anthropic's headers."""
    out = [("content-type", "application/json"), ("accept-encoding", "identity")]
    key = provider.api_key
    if provider.passthrough:
        given = dict(client)
        auth = given.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else given.get("x-api-key")
    if key:
        out.append(("authorization", f"Bearer {key}"))
    return _overridden(out, provider.headers)


def _overridden(headers: list[tuple[str, str]], overrides: Mapping[str, str]) -> list[tuple[str, str]]:
    """``headers`` with each of the provider's configured ``headers`` replacing, not joining,
    one of the same name (two ``accept`` or ``anthropic-version`` lines are read differently
    by different servers)."""
    if not overrides:
        return headers
    names = {k.lower() for k in overrides}
    return [(n, v) for n, v in headers if n not in names] + [(k.lower(), v) for k, v in overrides.items()]


def with_overrides(
    headers: list[tuple[bytes, bytes]], overrides: Mapping[str, str]
) -> list[tuple[bytes, bytes]]:
    """:func:`_overridden` for headers already encoded (a family's own, before signing)."""
    names = {k.lower().encode() for k in overrides}
    kept = [(n, v) for n, v in headers if n.lower() not in names]
    return kept + [(k.lower().encode(), v.encode()) for k, v in overrides.items()]


def response_headers(
    upstream: Iterable[tuple[bytes, bytes]], *, decoded_body: bool
) -> list[tuple[bytes, bytes]]:
    """Headers to send the client for an upstream response.

    ``decoded_body``: the body is relayed after httpx removed a content-encoding the provider
    applied anyway, so the header describing it must go too.
    """
    items = [(n.lower(), v) for n, v in upstream]
    drop = {
        t.encode() for t in _connection_tokens((n.decode("latin-1"), v.decode("latin-1")) for n, v in items)
    }
    out = []
    for name, value in items:
        if name.decode("latin-1") in _DROP_TO_CLIENT or name in drop:
            continue
        if decoded_body and name == b"content-encoding":
            continue
        out.append((name, value))
    return out


def upstream_url(provider: ProviderConfig, path: str, query: bytes) -> str:
    if provider.kind == "openai":
        return provider.base_url + "/chat/completions"  # base_url carries the /v1
    url = provider.base_url + path
    if query:
        url += "?" + query.decode("latin-1")
    return url
