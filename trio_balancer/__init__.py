"""trio_balancer: one fast, reliable Anthropic endpoint in front of several LLM providers.

The package is a layered house; a module may import its own layer and the layers below it,
never one above (``tests/test_layers.py`` walks every import to hold this):

    base       errors, logging, redaction      what every layer needs: error shapes, logs, scrubbing
    protocol/  sse, events, commit, convert/... the wire formats and request rules, sans-I/O
    tools/     simulator, claude_code          run beside the balancer; only cli imports them
    config/    schema, spec, parse             the configuration, frozen and strictly parsed
    policy/    health, failover, routing, ...  decisions without I/O
    ledger/    record, migrations, store, ...  the usage ledger
    upstream/  headers, providers, fit         talking to providers: header rules, HTTP clients, fitting
    flight/    hub, attempt, relay, flight,... one request's upstream lifetime, fan-out, outcome
    app/       asgi, messages, writer, ...     the ASGI app: requests, records, operator pages
    cli        cli, asgi (the Hypercorn entry)  the command line and the documented app path, on top
"""

__version__ = "0.1.0"

# Bottom to top; each entry is a layer's modules or packages (see the docstring).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "logging", "redaction"),
    ("protocol",),
    ("tools",),
    ("config",),
    ("policy",),
    ("ledger",),
    ("upstream",),
    ("flight",),
    ("app",),
    ("cli", "__main__", "asgi"),
)
