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

__all__ = ["GEMINI_API_VERSION", "gemini_count_body", "gemini_model_id", "gemini_path"]

GEMINI_API_VERSION = "v1beta"


def gemini_model_id(model: str) -> str:
    """The model's id in Gemini's paths: ``models/gemini-2.5-pro`` and ``gemini-2.5-pro`` alike."""
    return model.removeprefix("models/")


def gemini_path(model: str, *, stream: bool | None) -> str:
    """The path for ``model``: streamed, one JSON answer, or (``stream=None``) countTokens."""
    action = "countTokens" if stream is None else "streamGenerateContent" if stream else "generateContent"
    path = f"/{GEMINI_API_VERSION}/models/{quote(gemini_model_id(model), safe='')}:{action}"
    return path + "?alt=sse" if stream else path


def gemini_count_body(body: Mapping[str, Any], model: str) -> bytes:
    """``countTokens``' body for a converted request: everything that counts, with its model.

    ``generationConfig`` is left out: it counts nothing, and Gemini's countTokens refuses a
    thinking config on some models.
    """
    request = {k: v for k, v in body.items() if k != "generationConfig"}
    return dumps(
        {"generateContentRequest": {"model": f"models/{gemini_model_id(model)}", **request}}
    ).encode()
