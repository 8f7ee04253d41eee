"""Command line: ``trio-balancer serve`` and friends. The only module that prints."""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import trio

from trio_balancer import __version__
from trio_balancer import logging as blog
from trio_balancer.app.workers import PARENT_ENV, WORKER_ENV
from trio_balancer.config import Config, ConfigError, ProviderConfig, load_config
from trio_balancer.errors import leaf_exceptions
from trio_balancer.ledger import GROUP_COLUMNS, open_store, parse_time, sqlite_path
from trio_balancer.ledger.store import LedgerStore
from trio_balancer.policy.budgets import Spend, budget_lines, periods_at
from trio_balancer.tools.simulator import SimOptions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "claude":
        return _claude(args)
    if args.command == "keys":
        return _keys_new(args.name, admin=args.admin)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "route":
        return _route(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "usage":
        return _usage(args)
    if args.command == "sample-ledger":
        return _sample_ledger(args)
    return 2  # pragma: no cover - argparse enforces the choices


def _parser() -> argparse.ArgumentParser:
    """Every command and option; one flat list so ``--help`` and this read the same."""
    parser = argparse.ArgumentParser(prog="trio-balancer", description="Anthropic-compatible LLM balancer")
    parser.add_argument("--version", action="version", version=f"trio-balancer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the balancer")
    serve.add_argument("--config", help="TOML config file (default: built-in, forwards to Anthropic)")
    serve.add_argument("--host", help="address to bind (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides [server] port)")
    serve.add_argument(
        "--workers",
        help="processes serving the port: a number or 'auto' (one per core); overrides [server] workers",
    )
    serve.add_argument(
        "--allow-open",
        action="store_true",
        help="bind beyond loopback with no client keys (anyone who can reach it may use it)",
    )
    _log_args(serve)

    _ledger_parsers(sub)

    sim = sub.add_parser(
        "simulate", help="run an upstream simulator (Anthropic and OpenAI APIs) for tests and load tests"
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    d = SimOptions()
    sim.add_argument("--ttfb", type=float, default=d.ttfb, help="seconds before response headers")
    sim.add_argument(
        "--eps", type=float, default=d.eps, help="text events per second per stream (0: no pacing)"
    )
    sim.add_argument("--events", type=int, default=d.events, help="text deltas per response")
    sim.add_argument("--event-bytes", type=int, default=d.event_bytes, help="characters per delta")
    sim.add_argument("--cjk", action="store_true", help="Chinese text")
    sim.add_argument("--tools", type=int, default=d.tools, help="tool calls per response")
    sim.add_argument("--no-usage", action="store_true", help="send no usage (like some proxies)")
    sim.add_argument("--stamp", action="store_true", help="stamp each delta with its send time (ns)")
    sim.add_argument(
        "--context-window",
        action="append",
        default=[],
        metavar="MODEL=TOKENS",
        help="a model's window: longer prompts get the real prompt-too-long 400 (repeatable)",
    )
    sim.epilog = "Every option can also be set per request with an x-sim-* header; see trio_balancer/tools/simulator.py."

    claude = sub.add_parser(
        "claude",
        help="run Claude Code through the balancer (arguments after -- go to Claude Code)",
        description="Starts the installed Claude Code CLI with ANTHROPIC_BASE_URL pointing at the balancer.",
    )
    claude.add_argument("--config", help="the balancer's config (for its address)")
    claude.add_argument(
        "--url", help="the balancer's URL (default: from --config, else http://127.0.0.1:8787)"
    )
    claude.add_argument("--key", help="client key for the balancer (default: $TRIO_BALANCER_KEY if set)")
    claude.add_argument(
        "--install", action="store_true", help="install Claude Code from npm first if missing"
    )
    claude.add_argument("claude_args", nargs=argparse.REMAINDER, help="arguments for Claude Code")

    keys = sub.add_parser("keys", help="client keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a fresh client key and the config lines for it")
    new.add_argument("name")
    new.add_argument("--admin", action="store_true", help="an admin key ([server] admin_key_sha256) instead")

    check = sub.add_parser("check-config", help="validate a config and print the routes it implies")
    check.add_argument("path")

    _route_args(sub.add_parser("route", help="print the route and failover plan a saved request would get"))
    return parser


def _ledger_parsers(sub: Any) -> None:
    """``usage`` and ``sample-ledger``: the commands that read or write a ledger file."""
    sample = sub.add_parser(
        "sample-ledger", help="write a ledger of plausible records (a team's month) to try the console on"
    )
    sample.add_argument("db", help="a new SQLite file (or sqlite:/// URL) to write")
    sample.add_argument("--count", type=int, default=100_000, help="records (default 100,000)")
    sample.add_argument("--days", type=int, default=30, help="spread over the last N days (default 30)")

    usage = sub.add_parser("usage", help="print token and cost totals from the ledger")
    usage.add_argument("--config", help="config file whose [ledger] to read (default: built-in)")
    usage.add_argument("--db", help="ledger database: a sqlite:/// URL or a file path (overrides --config)")
    usage.add_argument("--since", help="start, e.g. 2026-11-01 or 2026-11-01T08:00:00 (UTC)")
    usage.add_argument("--until", help="end (exclusive)")
    usage.add_argument(
        "--by", default="provider,model", help="group by, comma-separated: " + ", ".join(GROUP_COLUMNS)
    )
    usage.add_argument("--flagged", action="store_true", help="list records with estimated usage or no price")
    usage.add_argument("--limit", type=int, default=100, help="records to list with --flagged")
    usage.add_argument("--csv", action="store_true", help="CSV instead of a table")


def _route_args(route: argparse.ArgumentParser) -> None:
    route.add_argument("request", help="a Messages request body (JSON), or a capture with headers and body")
    route.add_argument("--config", help="TOML config file (default: built-in)")
    route.add_argument("--client", default="", help="the client key name the request comes from")
    route.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="a request header (repeatable)"
    )


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
    from trio_balancer.app.asgi import create_app
    from trio_balancer.app.server import hypercorn_config, serve

    config = _load(args.config)
    blog.configure(args.log_level, args.log_format)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    open_ok = args.allow_open or config.server.allow_open
    if not config.server.client_keys:
        if not _loopback_host(host) and not open_ok:
            print(
                f"trio-balancer: refusing to bind {host}: no client keys are configured, so anyone who can reach"
                " it could spend your providers' keys. Add [[server.client_keys]] (trio-balancer keys new NAME),"
                " or pass --allow-open if that is what you want.",
                file=sys.stderr,
            )
            return 2
        if open_ok and not _loopback_host(host):
            print(
                f"trio-balancer: WARNING: open to every client that can reach {host}, with no client keys",
                file=sys.stderr,
            )
            config = attrs.evolve(config, server=attrs.evolve(config.server, allow_open=True))
        else:
            print("trio-balancer: no client keys configured: serving loopback clients only", file=sys.stderr)
    workers = _workers_asked(args.workers, config.server.workers)
    if workers is None:
        return 2
    if workers > 1 and WORKER_ENV not in os.environ:
        return _serve_workers(args, config, host, port, workers)
    hc = hypercorn_config(config, host, port)
    if WORKER_ENV in os.environ:
        # A SIGHUP before the app listens for it (a reload asked while this worker starts)
        # must not kill it: the file it is loading is the one asked for anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        hc.workers = int(os.environ[WORKER_ENV].split("/")[1])  # so Hypercorn binds with SO_REUSEPORT
        warnings.filterwarnings("ignore", message="The config `workers` has no affect")  # it has: that
    app = create_app(config)

    async def stop_when_asked_or_failed() -> None:
        """Hypercorn's shutdown trigger: SIGINT/SIGTERM, or the app no longer able to serve."""
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[Any]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, _wait_for_signal)
            nursery.start_soon(first, app.failed.wait)
            if WORKER_ENV in os.environ:  # the parent's pid from its own hand: it may be gone already
                nursery.start_soon(
                    first, partial(_parent_gone, int(os.environ.get(PARENT_ENV, os.getppid())))
                )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, hc, shutdown_trigger=stop_when_asked_or_failed))
            if not app.serving.is_set():
                return  # the start failed; Hypercorn is about to say why
            print(
                f"trio-balancer: listening on {' '.join(binds)} ({config.source})",
                file=sys.stderr,
                flush=True,
            )

    try:
        trio.run(run)
    except Exception as exc:
        problem = _start_problem(exc)
        if problem is None:
            raise
        print(f"trio-balancer: cannot start: {problem}", file=sys.stderr)
        return 1
    if app.failure is not None:
        print(f"trio-balancer: stopped after a fatal error: {app.failure}", file=sys.stderr)
        return 1
    print("trio-balancer: stopped", file=sys.stderr)
    return 0


def _start_problem(exc: BaseException) -> str | None:
    """What stopped the start, for the operator: the app's own reason, or the socket's."""
    from hypercorn.utils import LifespanFailureError

    for leaf in leaf_exceptions(exc):
        if isinstance(leaf, LifespanFailureError):
            # Hypercorn formats the app's message as: Lifespan failure in startup. '<message>'
            found = re.match(r"Lifespan failure in \w+\. '(.*)'$", str(leaf), re.S)
            return found.group(1) if found else str(leaf)
        if isinstance(leaf, OSError):  # the port is taken, the address is not ours...
            return f"cannot listen: {leaf.strerror or leaf}"
    return None


def _usage(args: argparse.Namespace) -> int:
    url = args.db or _load(args.config).ledger.url
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith("sqlite:///") and not Path(sqlite_path(url)).exists():
        print(f"trio-balancer: no ledger at {sqlite_path(url)}", file=sys.stderr)
        return 1
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        print(f"trio-balancer: bad time: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(url)
    except Exception as exc:
        print(f"trio-balancer: cannot open the ledger: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.flagged:
            rows = store.records(since, until, flagged=True, limit=args.limit)
            columns = ["id", "started_at", "provider", "upstream_model", "status", "usage_source", "priced",
                       "input_tokens", "output_tokens", "cost_usd"]  # fmt: skip
            for row in rows:
                row["started_at"] = datetime.fromtimestamp(row["started_at"], UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"
                )
        else:
            groups = [g for g in args.by.split(",") if g]
            try:
                rows = store.summary(since, until, groups)
            except ValueError as exc:
                print(f"trio-balancer: {exc}", file=sys.stderr)
                return 2
            columns = [*groups, "requests", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                       "cache_read_input_tokens", "cost_usd", "flagged", "unpriced", "errors"]  # fmt: skip
        budgets = _budget_rows(_load(args.config), store) if "client" in args.by.split(",") else []
    finally:
        store.close()
    _print_table(rows, columns, csv_out=args.csv)
    if budgets:
        print()
        _print_table(budgets, ["client", "budget", "limit", "spent", "left", "resets_at"], csv_out=args.csv)
    return 0


def _workers_asked(flag: str | None, configured: int) -> int | None:
    from trio_balancer.app.workers import worker_count

    if flag is None:
        return worker_count(configured)
    if flag == "auto":
        return worker_count(0)
    if not (flag.isascii() and flag.isdigit()) or not 1 <= int(flag) <= 256:
        print("trio-balancer: --workers must be 1..256 or auto", file=sys.stderr)
        return None
    return int(flag)


def _serve_workers(args: argparse.Namespace, config: Config, host: str, port: int, workers: int) -> int:
    """The parent of ``workers`` serving processes (``app/workers.py``)."""
    from trio_balancer.app.workers import WorkerSet, limits_need_redis, metrics_directory, reserve_port

    problem = limits_need_redis(config)
    if problem is not None:
        print(f"trio-balancer: cannot run {workers} workers: {problem}", file=sys.stderr)
        return 2
    try:
        held = reserve_port(host, port)
    except OSError as exc:
        print(f"trio-balancer: cannot bind {host}:{port}: {exc}", file=sys.stderr)
        return 1
    actual = held.getsockname()[1]
    command = [sys.executable, "-m", "trio_balancer", "serve", "--host", host, "--port", str(actual),
               "--workers", str(workers), "--log-level", args.log_level, "--log-format", args.log_format]  # fmt: skip
    if args.config:
        command += ["--config", args.config]
    if args.allow_open:
        command.append("--allow-open")
    shown = f"[{host}]" if ":" in host else host
    print(
        f"trio-balancer: {workers} workers on http://{shown}:{actual} ({config.source})",
        file=sys.stderr,
        flush=True,
    )
    metrics = metrics_directory()  # before the workers start: they import prometheus-client
    try:
        return trio.run(WorkerSet(command, workers).run)
    finally:
        held.close()
        shutil.rmtree(metrics, ignore_errors=True)


def _sample_ledger(args: argparse.Namespace) -> int:
    from trio_balancer.ledger.sample import fill

    url = args.db if "://" in args.db else f"sqlite:///{args.db}"
    if not url.startswith("sqlite:///") or Path(sqlite_path(url)).exists():
        print("trio-balancer: give a SQLite file that does not exist yet", file=sys.stderr)
        return 2
    if not (0 < args.count <= 10_000_000 and 0 < args.days <= 366):
        print("trio-balancer: --count 1..10,000,000 and --days 1..366", file=sys.stderr)
        return 2
    store = open_store(url)
    try:
        fill(store, args.count, days=args.days)
    finally:
        store.close()
    print(
        f'wrote {args.count:,} records to {sqlite_path(url)}; [ledger] url = "{url}" to see them in /console'
    )
    return 0


def _budget_rows(config: Config, store: LedgerStore) -> list[dict[str, Any]]:
    """Each client key's budgets against what the ledger says it spent in the current periods
    (every process's records: what the running balancers check against, give or take a sync)."""
    keys = [k for k in config.server.client_keys if k.has_budget]
    if not keys:
        return []
    tz = ZoneInfo(config.server.budget_timezone)
    now = time.time()
    periods = periods_at(now, tz)
    spent = {
        client: {"month": Spend(mu, mt), "day": Spend(du, dt)}
        for client, mu, mt, du, dt in store.spend_by_client(periods.month_start, periods.day_start)
    }
    rows = []
    for key in keys:
        for line in budget_lines(key, spent.get(key.name, {}), periods):
            rows.append(
                {
                    "client": key.name,
                    "budget": f"{line.what}/{line.period}",
                    "limit": line.limit,
                    "spent": round(line.spent, 6),
                    "left": round(line.left, 6),
                    "resets_at": datetime.fromtimestamp(line.resets_at, tz).isoformat(),
                }
            )
    return rows


def _print_table(rows: list[dict[str, Any]], columns: list[str], *, csv_out: bool) -> None:
    if csv_out:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if not rows:
        print("(no requests in this period)")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).isdigit()


def _claude(args: argparse.Namespace) -> int:
    import os

    from trio_balancer.tools.claude_code import ClaudeCodeNotFound, environment, find_binary, install

    if args.url:
        url = args.url.rstrip("/")
    else:
        server = _load(args.config).server
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        url = f"http://{host}:{server.port}"
    try:
        binary = install() if args.install else find_binary()
    except (ClaudeCodeNotFound, OSError, subprocess.SubprocessError) as exc:
        print(
            f"trio-balancer: {exc}; run with --install, or `npm install -g @anthropic-ai/claude-code`",
            file=sys.stderr,
        )
        return 127
    key = args.key or os.environ.get("TRIO_BALANCER_KEY")
    extra = args.claude_args[1:] if args.claude_args[:1] == ["--"] else args.claude_args
    os.execve(binary, [str(binary), *extra], environment(url, api_key=key))
    return 0  # pragma: no cover - execve does not return


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _keys_new(name: str, *, admin: bool) -> int:
    from trio_balancer.policy.auth import new_key

    key, digest = new_key()
    print(f"key (give it to {name!r}; it is not stored anywhere): {key}")
    print()
    if admin:
        print("[server]")
        print(f'admin_key_sha256 = "{digest}"')
    else:
        print("[[server.client_keys]]")
        print(f'name = "{name}"')
        print(f'sha256 = "{digest}"')
        print('# models = ["claude-*"]      # optional allow-list')
        print("# max_concurrent = 20          # optional")
        print("# requests_per_minute = 120    # optional")
    return 0


def _credential_said(provider: ProviderConfig) -> str:
    """How ``check-config`` says a provider is authenticated (never the credential itself)."""
    if provider.passthrough:
        return "client's own key (passthrough)"
    if provider.kind == "bedrock":
        return f"AWS credentials, {'profile ' + repr(provider.profile) if provider.profile else 'the default chain'}, SigV4"
    if provider.kind == "vertex":
        source = provider.service_account_file or "Application Default Credentials"
        return f"Google access tokens from {source}"
    if provider.kind == "gemini":
        return "own key, sent as x-goog-api-key"
    return f"own key, sent as {provider.auth}"


def _check_config(path: str) -> int:
    from trio_balancer.policy.routing import Router, listed_models

    config = _load(path)
    print(f"{config.source}: OK")
    print(f"server: http://{config.server.host}:{config.server.port}")
    print("providers:")
    for p in config.providers:
        print(f"  {p.name}: {p.kind} {p.base_url} ({_credential_said(p)})")
    router = Router(config)
    print("routes (first match wins; targets in failover order):")
    routes = config.routes or (router.route_for("*"),)
    for route in routes:
        targets = ", ".join(f"{t.provider}" + (f" as {t.model}" if t.model else "") + (f" (weight {t.weight:g})" if route.strategy == "weighted" else "")
                            for t in route.targets)  # fmt: skip
        when = ", ".join(
            f"{k} = {json.dumps(v)}" for k, v in attrs.asdict(route.when).items() if v not in (None, (), {})
        )
        named = f"{route.name}: " if route.name else ""
        print(f"  {named}{route.match}{f' when {when}' if when else ''}  ->  {targets}  [{route.strategy}{', sticky' if route.sticky else ''}]")  # fmt: skip
    models = listed_models(config)
    if models:
        # A route's `when` depends on the request: the chain shown is the first matching glob's,
        # said so when conditions could send a request elsewhere (`trio-balancer route` decides).
        print("models listed on /v1/models (first route whose glob matches; conditions not applied):")
        for model in models:
            route = router.route_for(model)
            chain = " -> ".join(f"{t.provider}:{t.model or model}" for t in route.targets)
            print(f"  {model}: {chain}{'  (when its conditions hold)' if not route.when.empty else ''}")
    print(
        f"ledger: {config.ledger.url if config.ledger.enabled else 'disabled'}; dedup: {'on' if config.dedup.enabled else 'off'}"
    )
    return 0


def _route(args: argparse.Namespace) -> int:
    """The decision for a saved request: its facts, the route and why, the plan; nothing sent."""
    from trio_balancer.errors import BalancerError
    from trio_balancer.policy.plan import fit_plan, fit_windows, resolve_windows
    from trio_balancer.policy.routing import Router
    from trio_balancer.protocol.features import needs_of
    from trio_balancer.protocol.request_facts import facts_of
    from trio_balancer.protocol.windows import asks_long_context, window_need

    config = _load(args.config)
    try:
        payload, headers = _saved_request(Path(args.request), args.header)
    except (OSError, ValueError, BalancerError) as exc:  # unreadable, or no Messages request
        print(f"trio-balancer: cannot read {args.request}: {exc}", file=sys.stderr)
        return 2
    body_bytes = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    facts = facts_of(payload, headers, client=args.client, body_bytes=body_bytes)
    kinds = [k for k in ("thinking", "images", "background", "subagent") if getattr(facts, k)]
    print(
        f"request: model {facts.model}, ~{facts.input_tokens} input tokens (estimated)"
        + "".join(f", {k}" for k in kinds)
    )
    print(f"  tools: {', '.join(sorted(facts.tools)) or '-'}; server tools: {', '.join(sorted(facts.server_tools)) or '-'}")  # fmt: skip
    router = Router(config)
    try:
        decision = router.decide(facts)
        for label, why in decision.passed_over:
            print(f"passed over {label}: {why}")
        print(f"route: {decision.label} ({decision.why})")
        attempts = router.plan(facts.model, _fresh_views(config), now=0.0, route=decision.route)
        kept, skipped = fit_plan(attempts, needs_of(payload))
        kept, too_small = fit_windows(
            resolve_windows(kept, long_context=asks_long_context(headers)), window_need(payload)
        )
        skipped += too_small
    except BalancerError as exc:
        print(f"refused: {exc}")
        return 1
    route = decision.route
    print(f"failover plan ({route.strategy}{', sticky' if route.sticky else ''}; every provider healthy):")
    for i, attempt in enumerate(kept, 1):
        print(f"  {i}. {attempt.provider.name}: {attempt.model}")
    for attempt, why in skipped:
        print(f"  skipped {attempt.provider.name}: {why}")
    return 0


def _saved_request(
    path: Path, header_args: Sequence[str]
) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    """A request body, or a capture (``{"headers": {...}, "body": {...}}``), and its headers;
    checked as the balancer checks a request (a bad one is a ``BalancerError``)."""
    from trio_balancer.protocol.validation import parse_request_body, validate_messages_request

    data = parse_request_body(path.read_bytes())  # the balancer's bounds: depth, text
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(data.get("body"), dict):
        given = data.get("headers") or {}
        if not isinstance(given, dict):
            raise ValueError("headers: must be an object of names and values")
        headers = [(str(k).lower().encode(), str(v).encode()) for k, v in given.items()]
        data = data["body"]
    for text in header_args:
        name, sep, value = text.partition(":")
        if not sep:
            raise ValueError(f"--header {text!r}: expected NAME:VALUE")
        headers.append((name.strip().encode(), value.strip().encode()))
    validate_messages_request(data)
    return data, headers


def _fresh_views(config: Config) -> dict[str, Any]:
    """Every provider as the router sees it at start: healthy, no rate limits, unmeasured."""
    from trio_balancer.policy.health import ProviderHealth
    from trio_balancer.policy.ratelimits import RateLimitState
    from trio_balancer.policy.routing import Ewma

    @attrs.frozen
    class Fresh:
        health: ProviderHealth = attrs.Factory(lambda: ProviderHealth(policy=config.health))
        limits: RateLimitState = attrs.Factory(RateLimitState)
        latency: Ewma = attrs.Factory(Ewma)

    return {p.name: Fresh() for p in config.providers}


def _simulate(args: argparse.Namespace) -> int:
    from trio_balancer.tools.simulator import Simulator, serve

    options = SimOptions(
        ttfb=args.ttfb, eps=args.eps, events=args.events, event_bytes=args.event_bytes, cjk=args.cjk,
        tools=args.tools, no_usage=args.no_usage, stamp=args.stamp,
    )  # fmt: skip

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            simulator = Simulator(options, windows=_sim_windows(args.context_window))
            port = await nursery.start(partial(serve, simulator, args.host, args.port))
            print(
                f"trio-balancer simulate: listening on http://{args.host}:{port}", file=sys.stderr, flush=True
            )
            await _wait_for_signal()
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


def _sim_windows(pairs: list[str]) -> dict[str, int]:
    windows: dict[str, int] = {}
    for pair in pairs:
        model, sep, tokens = pair.rpartition("=")
        if not sep or not model or not tokens.isdigit():
            raise SystemExit(f"trio-balancer simulate: --context-window wants MODEL=TOKENS, not {pair!r}")
        windows[model] = int(tokens)
    return windows


async def _parent_gone(parent: int) -> None:
    """Return once this worker's parent is gone (killed with SIGKILL, it could not say so): a
    worker must not hold the port for a balancer nobody runs any more."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await trio.sleep(1.0)
    print("trio-balancer: the workers' parent is gone, shutting down gracefully", file=sys.stderr)


async def _wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM: Hypercorn then stops accepting and drains for the grace period."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"trio-balancer: {signal.Signals(signum).name}, shutting down gracefully", file=sys.stderr)
            return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
