"""The console in a real headless browser (Debian's ``chromium``): every page loads with no
console message (no script error, nothing refused by its CSP), charts are drawn, filters and
pages lead where they should. ``TRIO_BALANCER_SCREENSHOTS=dir`` saves a picture of each page."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_balancer.config import load_config

from .browser import load_page, require_chromium, screenshot
from .helpers import start_balancer
from .test_console import console_config, filled  # noqa: F401 - the module's 5,000-record ledger

PAGES = [
    ("overview", "/console"),
    ("overview-48h-model", "/console?range=48h&by=model"),
    ("requests", "/console/requests"),
    ("requests-filtered", "/console/requests?client=bob&status=error"),
    ("health", "/console/health"),
]


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path, filled: Path) -> Any:  # noqa: F811
    require_chromium()
    ledger = tmp_path / "ledger.sqlite3"
    ledger.write_bytes(filled.read_bytes())
    b = await start_balancer(nursery, load_config(console_config(tmp_path, ledger)))
    yield b
    await b.client.aclose()


@pytest.mark.parametrize(("name", "path"), PAGES, ids=[n for n, _ in PAGES])
async def test_each_page_loads_clean(served: Any, tmp_path: Path, name: str, path: str) -> None:
    dom, messages = await load_page(served.url + path, tmp_path / "profile")
    assert messages == [], messages
    assert "trio-balancer" in dom and "</main>" in dom
    if path.startswith("/console?"):
        assert dom.count("<svg") == 3 and dom.count("<rect") > 50
    if name == "requests-filtered":
        clients = re.findall(r"</a></td><td>([^<]+)</td>", dom)
        assert clients and set(clients) == {"bob"}
        assert all(
            s in ("400", "429", "502", "529") for s in re.findall(r'<td class="n bad">(\d+)</td>', dom)
        )
    shots = os.environ.get("TRIO_BALANCER_SCREENSHOTS")
    if shots:
        await screenshot(served.url + path, tmp_path / "shot-profile", Path(shots) / f"console-{name}.png")


async def test_following_older_pages_and_a_request(served: Any, tmp_path: Path) -> None:
    dom, messages = await load_page(served.url + "/console/requests?client=alice", tmp_path / "p")
    assert messages == []
    first = re.findall(r'href="/console/requests/(req_fill_\d+)"', dom)
    older = re.search(r'rel="next" href="([^"]+)"', dom)
    assert older is not None and len(first) == 50
    dom2, messages = await load_page(served.url + older.group(1).replace("&amp;", "&"), tmp_path / "p")
    second = re.findall(r'href="/console/requests/(req_fill_\d+)"', dom2)
    assert messages == [] and second and not set(first) & set(second)
    detail, messages = await load_page(served.url + f"/console/requests/{second[0]}", tmp_path / "p")
    assert messages == [] and "Attempts" in detail and second[0] in detail
