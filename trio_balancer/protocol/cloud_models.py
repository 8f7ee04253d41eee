"""Claude's model names on Bedrock and Vertex, both ways. Pure.

Clients keep asking for Anthropic's names (``claude-sonnet-4-5-20250929``, or the alias
``claude-sonnet-4-5``); each cloud names the same model its own way:

- **Bedrock**: ``anthropic.<name>-v1:0`` for the dated models (``anthropic.claude-haiku-4-5-
  20251001-v1:0``), ``anthropic.claude-opus-4-6-v1`` for Opus 4.6, and the bare
  ``anthropic.<name>`` for the models after it (``anthropic.claude-sonnet-4-6``). The Claude 4
  family and later is invoked through a cross-region *inference profile*: the id with a
  geographic prefix (``global.``, ``us.``, ``eu.``, ``apac.``, ``jp.``, ``au.``), which a
  provider's ``inference_profile`` picks (``global`` by default; ``""`` for the base id).
- **Vertex**: the name with ``@`` before the date (``claude-sonnet-4-5@20250929``); the
  undated names of the newer models as they are (``claude-opus-4-6``).

Aliases are resolved to the dated model first (a cloud has no aliases). A name that already is
a cloud id (a route target's ``model = "us.anthropic.claude-..."``, an ARN, ``x@date``) is sent
as it is, and :func:`anthropic_model_name` reads any of them back, for prices and renaming.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["ALIASES", "anthropic_model_name", "bedrock_base_id", "bedrock_model_id", "vertex_model_id"]

# Anthropic's aliases of dated models; the clouds know only the dated ids.
ALIASES: Mapping[str, str] = {
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}
# Bedrock ids that follow neither the dated nor the bare rule.
_BEDROCK_EXCEPTIONS: Mapping[str, str] = {"claude-opus-4-6": "anthropic.claude-opus-4-6-v1"}
_DATED = re.compile(r"(?P<name>claude-[a-z0-9-]+?)-(?P<date>20\d{6})")
# An optional ARN, an optional inference-profile prefix, the vendor, the name, a version suffix.
_BEDROCK_ID = re.compile(
    r"(?:arn:[^/]*/)?(?:(?:global|us|eu|apac|jp|au|us-gov)\.)?anthropic\.(?P<name>.+?)(?:-v\d+(?::\d+)?)?"
)


def _is_cloud_id(model: str) -> bool:
    return "anthropic." in model or model.startswith("arn:") or "@" in model


def bedrock_base_id(model: str) -> str:
    """The Bedrock foundation-model id for ``model`` (no inference-profile prefix)."""
    if _is_cloud_id(model):
        return model
    name = ALIASES.get(model, model)
    if name in _BEDROCK_EXCEPTIONS:
        return _BEDROCK_EXCEPTIONS[name]
    if _DATED.fullmatch(name):
        return f"anthropic.{name}-v1:0"
    return f"anthropic.{name}"


def bedrock_model_id(model: str, inference_profile: str) -> str:
    """The id to invoke: the base id under the provider's inference profile ("" for none)."""
    if _is_cloud_id(model):
        return model
    base = bedrock_base_id(model)
    return f"{inference_profile}.{base}" if inference_profile else base


def vertex_model_id(model: str) -> str:
    """The Vertex publisher-model id for ``model``."""
    if _is_cloud_id(model):
        return model
    name = ALIASES.get(model, model)
    if (m := _DATED.fullmatch(name)) is not None:
        return f"{m['name']}@{m['date']}"
    return name


def anthropic_model_name(model: str) -> str:
    """The Anthropic name a Bedrock or Vertex model id stands for; other names unchanged."""
    if (m := _BEDROCK_ID.fullmatch(model)) is not None:
        return m["name"]
    if model.startswith("claude-") and "@" in model:
        return model.replace("@", "-", 1)
    return model
