"""The ASGI application: dispatch, the messages endpoint, the writer, accounting, status, admin.

May import every layer below it; only cli and tools import it.
"""
