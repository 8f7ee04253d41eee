"""Command line: ``trio-balancer serve`` and friends. The only module that prints."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from . import __version__
from . import logging as blog
from .config import Config, ConfigError, load_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-balancer", description="Anthropic-compatible LLM balancer")
    parser.add_argument("--version", action="version", version=f"trio-balancer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the balancer")
    serve.add_argument("--config", help="TOML config file (default: built-in, forwards to Anthropic)")
    serve.add_argument("--host", help="address to bind (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides [server] port)")
    _log_args(serve)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2  # pragma: no cover - argparse enforces the choices


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="console", choices=["console", "json"])


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"trio-balancer: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    import hypercorn.config
    import hypercorn.trio

    from .asgi import create_app

    config = _load(args.config)
    blog.configure(args.log_level, args.log_format)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    hc = hypercorn.config.Config()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = config.server.grace_period_s
    hc.accesslog = None
    hc.errorlog = "-"
    hc.keep_alive_timeout = 75  # above common load balancers' idle timeouts (60 s)
    app = create_app(config)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            # Hypercorn types ASGI messages as TypedDicts; our app takes plain mappings.
            serve = partial(hypercorn.trio.serve, app, hc, shutdown_trigger=_wait_for_signal)  # type: ignore[arg-type]
            binds = await nursery.start(serve)
            print(
                f"trio-balancer: listening on {' '.join(binds)} ({config.source})",
                file=sys.stderr,
                flush=True,
            )

    trio.run(run)
    print("trio-balancer: stopped", file=sys.stderr)
    return 0


async def _wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM: Hypercorn then stops accepting and drains for the grace period."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"trio-balancer: {signal.Signals(signum).name}, shutting down gracefully", file=sys.stderr)
            return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
