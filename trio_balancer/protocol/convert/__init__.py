"""Sans-I/O conversion between Anthropic Messages and the OpenAI Chat Completions and Gemini formats."""

from trio_balancer.protocol.convert.errors import (
    ConversionError,
    UpstreamStreamError,
    openai_error_to_anthropic,
)
from trio_balancer.protocol.convert.gemini_request import GeminiRequest, to_gemini
from trio_balancer.protocol.convert.gemini_response import gemini_count_answer, gemini_to_anthropic_message
from trio_balancer.protocol.convert.gemini_stream import GeminiStreamConverter
from trio_balancer.protocol.convert.request import Converted, RequestOptions, to_openai
from trio_balancer.protocol.convert.response import to_anthropic_message
from trio_balancer.protocol.convert.stream import StreamConverter, openai_error_type

__all__ = [
    "ConversionError",
    "Converted",
    "GeminiRequest",
    "GeminiStreamConverter",
    "RequestOptions",
    "StreamConverter",
    "UpstreamStreamError",
    "gemini_count_answer",
    "gemini_to_anthropic_message",
    "openai_error_to_anthropic",
    "openai_error_type",
    "to_anthropic_message",
    "to_gemini",
    "to_openai",
]
