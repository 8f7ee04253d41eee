"""Decisions without I/O: health, failover verdicts, routing, the plan's skips, keys, limits, stats.

May import the base modules, protocol and config; never trio's I/O, httpx or the app.
"""
