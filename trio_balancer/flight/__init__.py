"""One request's upstream lifetime: the failover loop, the relay and the fan-out to listeners.

May import base, protocol, config, policy, upstream; never the app, which owns flights.
"""
