"""Decisions without I/O: health, failover verdicts, routing and the plan's skips, client keys and limits, stats.

May import the base modules, protocol and config; never trio's I/O, httpx or the app.
"""
