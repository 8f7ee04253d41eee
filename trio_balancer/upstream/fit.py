"""One request made to fit one provider: the headers and the body it is sent.

The per-concern rules are pure modules in ``protocol/`` (features and their beta flags, system
messages, documents, thinking, tool schemas, the billing block); this module applies the ones a
provider's capabilities call for, in one pass, and says what it changed. A provider that lacks
nothing gets the client's own bytes: passthrough to Anthropic stays byte-identical.

Which providers a request may go to at all (it needs a server tool, MCP, a document kind) is
decided before, on the plan (``policy/plan.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trio_balancer.config import Capabilities, ProviderConfig
from trio_balancer.config.capabilities import ALL
from trio_balancer.protocol.billing import strip_billing_header
from trio_balancer.protocol.convert import RequestOptions, to_openai
from trio_balancer.protocol.documents import documents_as_text
from trio_balancer.protocol.events import dumps
from trio_balancer.protocol.feature_drops import DROPPABLE, drop_feature, without_fields
from trio_balancer.protocol.features import FEATURE_BETAS, beta_flags, feature_of_beta, join_betas
from trio_balancer.protocol.schema_dialect import clean_tools
from trio_balancer.protocol.system_messages import fold_system_messages
from trio_balancer.protocol.thinking import SignatureBook, fit_thinking
from trio_balancer.upstream.headers import request_headers
from trio_balancer.upstream.request import UpstreamRequest

__all__ = ["Fitted", "FittedPayload", "fit_payload", "fit_request"]


@attrs.frozen
class Fitted:
    """What goes to the provider, and what was changed to make it fit (for the debug log)."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    changes: tuple[str, ...] = ()


@attrs.frozen
class FittedPayload:
    """An Anthropic-format request made to fit, before it is encoded (a cloud re-shapes it)."""

    headers: list[tuple[bytes, bytes]]
    payload: Mapping[str, Any]  # ``request.payload`` itself when nothing changed
    changes: tuple[str, ...] = ()


def fit_request(
    provider: ProviderConfig, request: UpstreamRequest, model: str, *, thinking: SignatureBook | None = None
) -> Fitted:
    """The headers and body ``provider`` is sent for ``request``, asking for ``model``.

    ``thinking`` is the book of which family signed each thinking block: with it, an
    Anthropic-format provider is sent only the blocks of its own family
    (``protocol/thinking.py``); without it, thinking blocks are left as they are.
    """
    if provider.kind == "openai":
        return _fit_openai(provider, request, model, request_headers(request.headers, provider))
    fitted = fit_payload(provider, request, thinking=thinking)
    if fitted.payload is request.payload:
        return Fitted(fitted.headers, request.body_for(model), fitted.changes)
    return Fitted(fitted.headers, dumps({**fitted.payload, "model": model}).encode(), fitted.changes)


def fit_payload(
    provider: ProviderConfig, request: UpstreamRequest, *, thinking: SignatureBook | None = None
) -> FittedPayload:
    """The Anthropic-format headers and payload for ``provider``: features it lacks removed
    with their beta flags, thinking of other families dropped, the rest as the client sent it."""
    headers = request_headers(request.headers, provider)
    caps = provider.capabilities
    flags = beta_flags(headers)  # after the provider's own `headers`, which may set the flags
    lacking = {f for f in FEATURE_BETAS if not getattr(caps, f)}
    lacking |= {f for flag in flags if not caps.accepts_beta(flag) and (f := feature_of_beta(flag))}
    if not caps.adaptive_thinking:
        lacking.add("adaptive_thinking")
    payload: Mapping[str, Any] = request.payload
    changes: list[str] = []
    for feature in DROPPABLE:
        if feature in lacking:
            payload = _apply(drop_feature(payload, feature), changes, payload)
    if thinking is not None:  # after: adaptive thinking may have become "enabled", whose rule it keeps
        payload = _apply(fit_thinking(payload, caps.thinking_family, thinking), changes, payload)
    if caps.strip_billing_header:  # before folding: a folded system message is not the header
        payload = _apply(strip_billing_header(payload), changes, payload)
    if not caps.system_messages:
        payload = _apply(fold_system_messages(payload), changes, payload)
    if caps.documents != "native":
        payload = _apply(documents_as_text(payload), changes, payload)
    if caps.schema_dialect != "json-schema":
        payload = _apply(clean_tools(payload, caps.schema_dialect), changes, payload)
    if ALL not in caps.body_fields:
        payload = _apply(without_fields(payload, caps.takes_field), changes, payload)
    kept = [f for f in flags if _keeps(f, caps, lacking, payload)]
    if kept != flags:
        removed = [f for f in flags if f not in kept]
        changes.append(f"anthropic-beta without {', '.join(removed)}")
        headers = [(n, v) for n, v in headers if n != b"anthropic-beta"]
        if kept:
            headers.append((b"anthropic-beta", join_betas(kept)))
    return FittedPayload(headers, payload, tuple(changes))


def _keeps(flag: str, caps: Capabilities, lacking: set[str], payload: Mapping[str, Any]) -> bool:
    """A beta flag stays if the provider takes it and its feature was not removed.

    The flag of a feature that cannot be dropped stays as long as its field does (the plan
    skipped the providers lacking it): never the flag gone and the field kept.
    """
    feature = feature_of_beta(flag)
    if _uses(payload, feature):
        return True
    return caps.accepts_beta(flag) and feature not in lacking


def _uses(payload: Mapping[str, Any], feature: str | None) -> bool:
    """The body still uses a feature that cannot be dropped (so its flag must stay with it)."""
    if feature in ("mcp_servers", "container"):
        return bool(payload.get(feature))
    if feature == "structured_outputs":
        output = payload.get("output_config")
        return isinstance(output, dict) and bool(output.get("format"))
    return False


def _apply(
    result: tuple[Mapping[str, Any], str | None], changes: list[str], before: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Keep a rule's new payload only if it changed something (so an untouched request stays as sent)."""
    payload, note = result
    if note is None:
        return before
    changes.append(note)
    return payload


def _fit_openai(
    provider: ProviderConfig, request: UpstreamRequest, model: str, headers: list[tuple[bytes, bytes]]
) -> Fitted:
    caps = provider.capabilities
    payload: Mapping[str, Any] = request.payload
    notes: list[str] = []
    if caps.strip_billing_header:
        payload = _apply(strip_billing_header(payload), notes, payload)
    options = RequestOptions(
        max_tokens_field=provider.max_tokens_field,
        reasoning_effort=provider.reasoning_effort,
        pdf_file_parts=caps.documents in ("file", "native"),
        reasoning_content=caps.reasoning_content,
    )
    if not caps.tool_search:
        payload = _apply(drop_feature(payload, "tool_search"), notes, payload)
    if caps.schema_dialect != "json-schema":  # before conversion: the parameters come out clean
        payload = _apply(clean_tools(payload, caps.schema_dialect), notes, payload)
    converted = to_openai(payload, model=model, options=options)
    changes = (*notes, *(f"dropped {f}" for f in converted.dropped))
    return Fitted(headers, dumps(converted.body).encode(), changes)
