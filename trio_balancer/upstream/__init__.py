"""Talking to providers: header rules both ways, the provider registry and its HTTP clients,
and ``fit``: one request made to fit one provider's capabilities (the plan's skips, the headers
and body it is sent).

May import everything below it (base, protocol, config, policy); never flight or app.
"""
