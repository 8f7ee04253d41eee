"""The floor of our stack: a naive Trio/Hypercorn/httpx relay, for comparison in the same run.

No routing, parsing, failover, ledger or metrics: read the client's body, stream the upstream's
bytes back. Whatever it costs per event is what Hypercorn and httpx cost on this machine.

    python bench/naive_relay.py --port 9000 --upstream http://127.0.0.1:8788
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import trio


def make_app(upstream: str) -> Any:
    client: dict[str, httpx.AsyncClient] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            client["c"] = httpx.AsyncClient(
                timeout=httpx.Timeout(10, read=None),
                limits=httpx.Limits(max_connections=4000, max_keepalive_connections=2000),
            )
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await client["c"].aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [
            (n, v) for n, v in scope["headers"] if n.startswith((b"x-sim", b"content-type", b"anthropic"))
        ]
        async with client["c"].stream("POST", upstream + scope["path"], content=body, headers=headers) as r:
            await send(
                {
                    "type": "http.response.start",
                    "status": r.status_code,
                    "headers": [(b"content-type", r.headers["content-type"].encode())],
                }
            )
            async for chunk in r.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.backlog = 4096
    config.accesslog = None
    trio.run(partial(hypercorn.trio.serve, make_app(args.upstream), config))


if __name__ == "__main__":
    main()
