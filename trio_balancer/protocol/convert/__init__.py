"""Sans-I/O conversion between Anthropic Messages and OpenAI Chat Completions."""

from trio_balancer.protocol.convert.errors import openai_error_to_anthropic
from trio_balancer.protocol.convert.request import Converted, RequestOptions, to_openai
from trio_balancer.protocol.convert.response import to_anthropic_message
from trio_balancer.protocol.convert.stream import (
    ConversionError,
    StreamConverter,
    UpstreamStreamError,
    openai_error_type,
)

__all__ = [
    "ConversionError",
    "Converted",
    "RequestOptions",
    "StreamConverter",
    "UpstreamStreamError",
    "openai_error_to_anthropic",
    "openai_error_type",
    "to_anthropic_message",
    "to_openai",
]
