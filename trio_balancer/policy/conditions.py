"""A route's ``when`` conditions checked against one request's facts. Pure.

Each condition given in ``[[routes]] when`` is checked on its own and gives either what it
matched (``thinking``, ``min_input_tokens 60000 <= 71200``) or why it failed (for the debug
log and ``trio-balancer route``). How each one reads the request:

- ``thinking``: ``thinking.type`` is ``enabled`` or ``adaptive``;
- ``min_input_tokens`` / ``max_input_tokens``: the estimated input tokens
  (``protocol/request_facts.py``), inclusive bounds;
- ``images``: an image or document block in any message (tool results too);
- ``tools``: every named client tool is in ``tools``;
- ``server_tools``: every named server tool is in ``tools``; ``web_search`` names any version
  (``web_search_20250305``), a full type names only itself;
- ``background`` / ``subagent``: ``protocol/request_kind.py``;
- ``client``: the client key's name (or the client's identity without keys) is one of these;
- ``header``: each named request header (any case) is present and its value matches the glob.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

import attrs

from trio_balancer.config import When
from trio_balancer.protocol.request_facts import RequestFacts

__all__ = ["WhenCheck", "check_when"]

_VERSION = re.compile(r"_\d{8}$")


@attrs.frozen
class WhenCheck:
    """The conditions that held, and why the others did not (empty: the route's ``when`` holds)."""

    matched: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    @property
    def holds(self) -> bool:
        return not self.failed


def check_when(when: When, facts: RequestFacts) -> WhenCheck:
    """Every condition of ``when`` on ``facts``."""
    matched: list[str] = []
    failed: list[str] = []

    def flag(name: str, wanted: bool | None, actual: bool) -> None:
        if wanted is None:
            return
        if actual == wanted:
            matched.append(name if wanted else f"not {name}")
        else:
            failed.append(f"{name} = {str(wanted).lower()}, the request: {str(actual).lower()}")

    flag("thinking", when.thinking, facts.thinking)
    n = facts.input_tokens
    if when.min_input_tokens is not None:
        ok = n >= when.min_input_tokens
        (matched if ok else failed).append(
            f"min_input_tokens {when.min_input_tokens} {'<=' if ok else '>'} {n}"
        )
    if when.max_input_tokens is not None:
        ok = n <= when.max_input_tokens
        (matched if ok else failed).append(
            f"max_input_tokens {when.max_input_tokens} {'>=' if ok else '<'} {n}"
        )
    flag("images", when.images, facts.images)
    if when.tools:
        missing = [t for t in when.tools if t not in facts.tools]
        if missing:
            failed.append(f"tools: no {', '.join(missing)}")
        else:
            matched.append(f"tools {', '.join(when.tools)}")
    if when.server_tools:
        bases = {_VERSION.sub("", t) for t in facts.server_tools} | facts.server_tools
        missing = [t for t in when.server_tools if t not in bases]
        if missing:
            failed.append(f"server_tools: no {', '.join(missing)}")
        else:
            matched.append(f"server_tools {', '.join(when.server_tools)}")
    flag("background", when.background, facts.background)
    flag("subagent", when.subagent, facts.subagent)
    if when.client:
        if facts.client in when.client:
            matched.append(f"client {facts.client}")
        else:
            failed.append(f"client: {facts.client!r} is not {' or '.join(when.client)}")
    for name, glob in when.header.items():
        value = facts.headers.get(name.lower())
        if value is not None and fnmatchcase(value, glob):
            matched.append(f"header {name.lower()}")
        else:
            failed.append(f"header {name.lower()}: {'absent' if value is None else 'does not match'}")
    return WhenCheck(tuple(matched), tuple(failed))
