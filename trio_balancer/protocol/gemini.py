"""Gemini's own API (generativelanguage): the paths and the count-tokens body. Pure.

The model and the stream choice are in the path, not the body:
``/v1beta/models/{model}:streamGenerateContent?alt=sse`` streams (each SSE ``data:`` a whole
``GenerateContentResponse``), ``:generateContent`` answers one JSON, ``:countTokens`` counts.
``countTokens`` is sent the whole ``generateContentRequest`` (with its model) rather than bare
``contents``, so that the system instruction and the tools are counted too, as Anthropic's
count_tokens counts them. The body itself is ``protocol/convert/gemini_request.to_gemini``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from trio_balancer.protocol.events import dumps
from trio_balancer.protocol.thinking import MINTED_PREFIX

__all__ = [
    "GEMINI_API_VERSION",
    "GEMINI_SIGNATURE_PREFIX",
    "gemini_count_body",
    "gemini_count_path",
    "gemini_model_id",
    "gemini_path",
    "gemini_signature",
    "thought_signature_of",
]

GEMINI_API_VERSION = "v1beta"
# Our signature for a thinking block carrying Gemini's thoughtSignature: minted (so no
# Anthropic-format provider is sent it, protocol/thinking.py), and readable back when the
# client sends the block in its history (convert/gemini_request.py).
GEMINI_SIGNATURE_PREFIX = MINTED_PREFIX + "g."


def gemini_model_id(model: str) -> str:
    """The model's id in Gemini's paths: ``models/gemini-2.5-pro`` and ``gemini-2.5-pro`` alike."""
    return model.removeprefix("models/")


def gemini_path(model: str, *, stream: bool) -> str:
    """The path that asks ``model`` for a streamed (SSE) or one JSON answer."""
    if stream:
        return _model_path(model, "streamGenerateContent") + "?alt=sse"
    return _model_path(model, "generateContent")


def gemini_count_path(model: str) -> str:
    return _model_path(model, "countTokens")


def _model_path(model: str, action: str) -> str:
    return f"/{GEMINI_API_VERSION}/models/{quote(gemini_model_id(model), safe='')}:{action}"


def gemini_signature(thought_signature: str) -> str:
    """The Anthropic thinking signature that carries a Gemini ``thoughtSignature``."""
    return GEMINI_SIGNATURE_PREFIX + thought_signature


def thought_signature_of(signature: Any) -> str | None:
    """The Gemini ``thoughtSignature`` inside one of our signatures, else None."""
    if isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE_PREFIX):
        return signature[len(GEMINI_SIGNATURE_PREFIX) :] or None
    return None


def gemini_count_body(body: Mapping[str, Any], model: str) -> bytes:
    """``countTokens``' body for a converted request: everything that counts, with its model.

    ``generationConfig`` is left out: it counts nothing, and Gemini's countTokens refuses a
    thinking config on some models.
    """
    request = {k: v for k, v in body.items() if k != "generationConfig"}
    return dumps(
        {"generateContentRequest": {"model": f"models/{gemini_model_id(model)}", **request}}
    ).encode()
