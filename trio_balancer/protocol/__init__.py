"""The Anthropic and OpenAI wire formats, sans-I/O: SSE, events, the commit gate, conversion, usage.

Owns pure functions and state machines over bytes and dicts. Imports nothing of ours but the
base modules (errors, redaction); never trio, httpx or a socket.
"""
