"""Talking to providers: header rules both ways, the provider registry and its HTTP clients.

May import everything below it (base, protocol, config, policy); never flight or app.
"""
