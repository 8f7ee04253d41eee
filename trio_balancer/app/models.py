"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models this balancer routes, listed.

Answered from the config alone, never from a provider: Claude Code's model picker (gateway
discovery, >= 2.1.129) calls ``GET /v1/models?limit=1000`` at start and gives up after about
3 s. It keeps only the ids that contain ``claude`` or ``anthropic`` (case-insensitive) for its
picker; the others are listed all the same, since other clients use them and Claude Code
still sends them when named in ``ANTHROPIC_MODEL``, ``/model <id>`` or
``ANTHROPIC_CUSTOM_MODEL_OPTION``. A non-claude model meant for the picker needs a route
whose literal ``match`` is a ``claude-*`` alias.

Pages are Anthropic's: ``limit`` (1 to 1000, default 20), then the models after ``after_id``
or before ``before_id``; ``has_more``, ``first_id`` and ``last_id`` say where the page sits.
Each model gets a fixed creation date: the config does not know the real one and clients
only display it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from trio_balancer.config import Config
from trio_balancer.errors import InvalidRequest, NotFound
from trio_balancer.policy.routing import listed_models

__all__ = ["model_object", "models_page"]

_MODELS_EPOCH = "2025-01-01T00:00:00Z"
DEFAULT_LIMIT = 20  # Anthropic's
MAX_LIMIT = 1000


def models_page(config: Config, query: bytes = b"") -> dict[str, Any]:
    """One page of the listed models, as Anthropic's ``GET /v1/models`` answers it."""
    ids = listed_models(config)
    params = parse_qs(query.decode("latin-1"))
    limit = _limit(params.get("limit", [str(DEFAULT_LIMIT)])[-1])
    after, before = params.get("after_id", [None])[-1], params.get("before_id", [None])[-1]
    if after is not None and before is not None:
        raise InvalidRequest("before_id and after_id: give one of them, not both")
    if before is not None:
        end = _index(ids, before, "before_id")
        start = max(0, end - limit)
        chosen, has_more = ids[start:end], start > 0
    else:
        start = _index(ids, after, "after_id") + 1 if after is not None else 0
        chosen, has_more = ids[start : start + limit], start + limit < len(ids)
    data = [_model(m) for m in chosen]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_object(config: Config, model_id: str) -> dict[str, Any]:
    if model_id in listed_models(config):
        return _model(model_id)
    raise NotFound(f"model {model_id!r} not found")


def _limit(text: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few of them (a value
    # past Python's 4300-digit bound would raise): anything else is the client's 400.
    if not (text.isascii() and text.isdigit() and len(text) <= 4) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}, not {text[:20]!r}")
    return int(text)


def _index(ids: list[str], model_id: str, name: str) -> int:
    try:
        return ids.index(model_id)
    except ValueError:
        raise InvalidRequest(f"{name}: {model_id!r} is not a listed model") from None


def _model(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _MODELS_EPOCH}
