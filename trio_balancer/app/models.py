"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models this balancer routes, listed.

Each gets a fixed creation date: the config does not know the real one and clients only
display it.
"""

from __future__ import annotations

from typing import Any

from trio_balancer.config import Config
from trio_balancer.errors import NotFound
from trio_balancer.policy.routing import listed_models

__all__ = ["model_object", "models_page"]

_MODELS_EPOCH = "2025-01-01T00:00:00Z"


def models_page(config: Config) -> dict[str, Any]:
    data = [_model(m) for m in listed_models(config)]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_object(config: Config, model_id: str) -> dict[str, Any]:
    if model_id in listed_models(config):
        return _model(model_id)
    raise NotFound(f"model {model_id!r} not found")


def _model(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _MODELS_EPOCH}
