"""The real command line: `trio-balancer serve` and Hypercorn's own CLI, as subprocesses."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from trio_balancer.cli import main

from .fakes import FakeUpstream, Reply, anthropic_text_events, interleave
from .helpers import SONNET, env, message_body, read_until

BODY = message_body(model=SONNET, max_tokens=8, stream=True)


def write_config(tmp_path: Path, upstream: FakeUpstream, grace: float = 10.0) -> Path:
    path = tmp_path / "balancer.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
grace_period_s = {grace}

[[providers]]
name = "fake"
kind = "anthropic"
base_url = "{upstream.url}"
api_key = "sk-cli-test-key"
"""
    )
    return path


async def test_serve_streams_and_drains_on_sigterm(tmp_path: Path, upstream: FakeUpstream) -> None:
    """SIGTERM mid-stream: no new connections, the running stream finishes, exit code 0."""
    events = anthropic_text_events([f"w{i} " for i in range(10)])
    upstream.script(Reply(steps=interleave(events, 0.1)))
    config = write_config(tmp_path, upstream)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        assert proc.stderr is not None
        m, _ = await read_until(proc.stderr, rb"listening on (http://[\d.]+:\d+)")
        url = m.group(1).decode()
        async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
            async with client.stream("POST", "/v1/messages", json=BODY) as r:
                chunks = []
                async for chunk in r.aiter_raw():
                    chunks.append(chunk)
                    if len(chunks) == 3:
                        proc.send_signal(signal.SIGTERM)
            assert b"".join(chunks) == b"".join(events)
        with trio.fail_after(15):
            assert await proc.wait() == 0
        _, rest = await read_until(proc.stderr, rb"stopped")
        assert b"SIGTERM" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_reloads_config(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = write_config(tmp_path, upstream)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_balancer", "serve", "--config", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        assert proc.stderr is not None
        m, _ = await read_until(proc.stderr, rb"listening on (http://[\d.]+:\d+)")
        async with httpx.AsyncClient(base_url=m.group(1).decode(), trust_env=False) as client:
            names = [p["name"] for p in (await client.get("/providers")).json()["providers"]]
            assert names == ["fake"]
            config.write_text(config.read_text().replace('name = "fake"', 'name = "renamed"'))
            proc.send_signal(signal.SIGHUP)
            await read_until(proc.stderr, rb"config.reloaded")
            names = [p["name"] for p in (await client.get("/providers")).json()["providers"]]
            assert names == ["renamed"]
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()


async def test_hypercorn_cli_with_config_env(tmp_path: Path, upstream: FakeUpstream) -> None:
    upstream.script(Reply(steps=anthropic_text_events(["from hypercorn"])))
    config = write_config(tmp_path, upstream)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hypercorn = Path(sys.executable).with_name("hypercorn")
    proc = await trio.lowlevel.open_process(
        [
            str(hypercorn),
            "--worker-class",
            "trio",
            "--bind",
            f"127.0.0.1:{port}",
            "trio_balancer.asgi:create_app()",
        ],
        stderr=subprocess.PIPE,
        env={**env(), "TRIO_BALANCER_CONFIG": str(config)},
    )
    try:
        assert proc.stderr is not None
        await read_until(proc.stderr, rb"Running on")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            r = await client.post("/v1/messages", json=BODY)
        assert r.status_code == 200
        assert b"from hypercorn" in r.content
        assert upstream.received[0].header("x-api-key") == "sk-cli-test-key"
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            await proc.wait()


def test_bad_config_exits_with_message(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.toml"
    path.write_text('[[providers]]\nname = "x"\nkind = "nope"\nbase_url = "http://x"\napi_key = "k"\n')
    with pytest.raises(SystemExit) as info:
        main(["serve", "--config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "providers[0].kind" in err


def test_check_config_says_how_each_cloud_authenticates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "clouds.toml"
    path.write_text(
        '[[providers]]\nname = "b"\nkind = "bedrock"\nregion = "us-east-1"\nprofile = "work"\n'
        '[[providers]]\nname = "v"\nkind = "vertex"\nproject = "p"\nregion = "global"\n'
        '[[providers]]\nname = "g"\nkind = "gemini"\napi_key = "AIzaSy-secret-123"\n'
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "b: bedrock https://bedrock-runtime.us-east-1.amazonaws.com (AWS credentials, profile 'work', SigV4)"
        in out
    )
    assert (
        "v: vertex https://aiplatform.googleapis.com (Google access tokens from Application Default Credentials)"
        in out
    )
    assert "(own key, sent as x-goog-api-key)" in out and "AIzaSy-secret-123" not in out
