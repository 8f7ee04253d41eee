"""trio_balancer: one fast, reliable Anthropic endpoint in front of several LLM providers."""

__version__ = "0.1.0"
