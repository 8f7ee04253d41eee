"""The Anthropic and OpenAI wire formats, sans-I/O: SSE, events, the commit gate, conversion, usage.

Also the rules that make a request fit one provider, one module per concern: features (beta
flags with their fields) and feature_drops, system_messages, documents, thinking (signatures
by family), schema_dialect (tool schemas), billing (Claude Code's billing block); and what
routing reads of a request: request_facts, request_kind (background, subagent), windows
(context windows, "prompt too long"), model_name (the model the client is shown). Owns pure
functions and state machines over bytes and dicts. Imports nothing of ours but the
base modules (errors, redaction); never trio, httpx or a socket.
"""
