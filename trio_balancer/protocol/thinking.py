"""Thinking blocks across providers: who signed each one, and what each provider may be sent. Pure.

A thinking block's ``signature`` (a ``redacted_thinking`` block's ``data``) can only be checked
by the family that made it: Anthropic's API answers 400 "Invalid signature in thinking block"
to a block signed by another Anthropic-compatible server, and those answer the same to
Anthropic's. When a balancer moves a conversation between families, the client's history
holds blocks of several. So the relay remembers which family produced every signature it
passes (:class:`SignatureBook`), and before a request goes to an Anthropic-format provider
:func:`fit_thinking` keeps only the blocks of that provider's family.

The rules, and why:

- **Unknown means Anthropic's.** A signature the book does not know is taken for Anthropic's:
  history from before the balancer (or after the book forgot) most often comes from Claude
  Code talking to Anthropic directly, and Anthropic's own API is the one that verifies most
  strictly. Signatures the balancer minted (:data:`MINTED_PREFIX`, for reasoning converted from
  an OpenAI-compatible model) and empty ones are nobody's: no Anthropic-format provider can
  verify them, whatever the book says.
- **Foreign blocks are dropped, not rewritten.** A thinking block needs a signature the target
  can verify; turned into a text block it would become words the assistant said, and could not
  open a tool-loop turn either. Prior reasoning as plain text goes where it is wanted: to
  OpenAI-compatible reasoning models, as ``reasoning_content`` (``convert/request.py``).
- **An open tool loop keeps Anthropic's rule.** With thinking ``enabled``, Anthropic's API
  rejects a request whose final assistant message (the one the ending ``tool_result`` answers)
  does not start with a thinking block (adaptive thinking may choose not to think, so it has
  no such rule): "When `thinking` is enabled, a final `assistant` message must
  start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result`
  blocks) ... To avoid this requirement, disable `thinking`." When that block is missing
  (dropped here as another family's, or left out by Claude Code, which drops the thinking of a
  message another model wrote), the request goes without ``thinking`` (and without the
  ``clear_thinking`` context edit, which needs it) rather than get that 400. The next turn
  thinks again.
- An assistant message left with nothing is removed (consecutive user messages are combined
  by the API); the client's payload is never changed in place, and a request that needs no
  change is returned as the same object, so passthrough stays byte-identical.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "ABSENT_TTL_S",
    "BOOK_SIZE",
    "DEFAULT_FAMILY",
    "MINTED_PREFIX",
    "SignatureBook",
    "fit_thinking",
    "mint_signature",
    "remember_event",
    "remember_message",
    "signature_key",
    "signatures_in",
]

# Family names are provider names: a few, short. Names learned from Redis are bounded so that a
# lying or shared-by-mistake Redis cannot grow the book beyond its entries.
FAMILY_NAMES_MAX = 256
FAMILY_NAME_MAX = 200
# Whose a signature is when the book does not know it (see the module docstring).
DEFAULT_FAMILY = "anthropic"
# Signatures the balancer makes for thinking converted from OpenAI's reasoning_content.
MINTED_PREFIX = "tbx1."
# Signatures remembered per process: ~150 bytes each, so about 15 MB when full. A long Claude
# Code session makes one or two per turn; 100k covers thousands of live conversations.
BOOK_SIZE = 100_000
# How long a signature the cluster did not know is not asked about again.
ABSENT_TTL_S = 60.0
# Fresh entries waiting to be shared (when Redis is away longer, the oldest are not shared).
FRESH_MAX = 10_000
_THINKING = ("thinking", "redacted_thinking")


def signature_key(signature: str) -> bytes:
    """The book's key for a signature: a 12-byte digest (signatures run to kilobytes)."""
    return hashlib.blake2b(signature.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def mint_signature() -> str:
    """A signature for a thinking block the balancer made (from OpenAI-style reasoning).

    Random, and recognisable by its prefix: it marks the block as one no Anthropic-format
    provider can verify, even after the book has forgotten which model it came from.
    """
    return MINTED_PREFIX + secrets.token_urlsafe(24)


class SignatureBook:
    """Which family made each thinking signature seen: bounded, least recently used out first.

    ``remember`` is what the relay calls for each signature it passes; new entries also wait
    in a short queue (:meth:`take_fresh`) for the cluster to share, and ``on_fresh`` (when set)
    is called so it wakes up. ``learn`` takes an entry another instance shared (not shared
    again). ``unknown`` and ``checked`` let the cluster ask about signatures no one here has
    seen, once in a while rather than on every request.
    """

    def __init__(self, max_entries: int = BOOK_SIZE) -> None:
        self.max_entries = max_entries
        self._families: OrderedDict[bytes, str] = OrderedDict()
        self._absent: OrderedDict[bytes, float] = OrderedDict()  # asked about, not known: when
        self._fresh: deque[tuple[bytes, str]] = deque(maxlen=FRESH_MAX)
        self._names: dict[str, str] = {}  # one string per family name, however it arrived
        self.on_fresh: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._families)

    def remember(self, signature: str, family: str) -> None:
        key = signature_key(signature)
        if self._families.get(key) == family:
            self._families.move_to_end(key)
            return
        self._put(key, family)
        self._fresh.append((key, self._families[key]))
        if self.on_fresh is not None:
            self.on_fresh()

    def learn(self, key: bytes, family: str) -> None:
        """An entry from another instance (through Redis); a name no provider could have is ignored."""
        if isinstance(family, str) and 0 < len(family) <= FAMILY_NAME_MAX:
            self._put(key, family)

    def family_of(self, signature: str) -> str | None:
        key = signature_key(signature)
        family = self._families.get(key)
        if family is not None:
            self._families.move_to_end(key)
        return family

    def take_fresh(self, limit: int = 1000) -> list[tuple[bytes, str]]:
        """Up to ``limit`` entries remembered since the last call, oldest first."""
        out: list[tuple[bytes, str]] = []
        while self._fresh and len(out) < limit:
            out.append(self._fresh.popleft())
        return out

    def unknown(self, signatures: Iterable[str], now: float) -> list[bytes]:
        """Keys of the signatures neither known here nor asked about in the last ABSENT_TTL_S."""
        out: dict[bytes, None] = {}
        for signature in signatures:
            key = signature_key(signature)
            if key in self._families or key in out:
                continue
            asked = self._absent.get(key)
            if asked is None or now - asked >= ABSENT_TTL_S:
                out[key] = None
        return list(out)

    def checked(self, keys: Iterable[bytes], now: float) -> None:
        """The cluster was asked about ``keys`` (those it knew were ``learn``-ed)."""
        for key in keys:
            if key in self._families:
                continue
            self._absent[key] = now
            self._absent.move_to_end(key)
            if len(self._absent) > self.max_entries:
                self._absent.popitem(last=False)

    def _put(self, key: bytes, family: str) -> None:
        name = self._names.get(family)
        if name is None:
            name = family
            if len(self._names) < FAMILY_NAMES_MAX:  # interned while few (they are providers)
                self._names[family] = family
        self._families[key] = name
        self._families.move_to_end(key)
        self._absent.pop(key, None)
        if len(self._families) > self.max_entries:
            self._families.popitem(last=False)


# -- recording what a provider sent -------------------------------------------------------------


def _mark(block: Mapping[str, Any]) -> str:
    """The part of a thinking block only its maker can verify ("" when it has none)."""
    value = block.get("signature") if block.get("type") == "thinking" else block.get("data")
    return value if isinstance(value, str) else ""


def remember_event(book: SignatureBook, event: Mapping[str, Any], family: str) -> None:
    """One Anthropic SSE event's signature, if it carries one (``signature_delta``, a block start)."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "signature_delta":
            signature = delta.get("signature")
            if isinstance(signature, str) and signature:
                book.remember(signature, family)
    elif kind == "content_block_start":
        block = event.get("content_block")
        if isinstance(block, dict) and block.get("type") in _THINKING and (mark := _mark(block)):
            book.remember(mark, family)


def remember_message(book: SignatureBook, message: Mapping[str, Any], family: str) -> None:
    """The signatures of a whole (non-stream) Anthropic message."""
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") in _THINKING and (mark := _mark(block)):
            book.remember(mark, family)


def signatures_in(payload: Mapping[str, Any]) -> list[str]:
    """Every thinking signature (and redacted data) in a request's assistant messages, in order."""
    out = []
    for message in payload.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            for block in content if isinstance(content, list) else ():
                if isinstance(block, dict) and block.get("type") in _THINKING and (mark := _mark(block)):
                    out.append(mark)
    return out


# -- fitting a request to one family ------------------------------------------------------------


def _origin(block: Mapping[str, Any], family: str, book: SignatureBook) -> tuple[bool, str]:
    """Whether a provider of ``family`` can verify ``block``, and whose it is (for the note)."""
    mark = _mark(block)
    if not mark:
        return False, "unsigned"
    known = book.family_of(mark)
    if mark.startswith(MINTED_PREFIX):
        return False, known or "converted reasoning"
    origin = known or DEFAULT_FAMILY
    return origin == family, origin


def fit_thinking(
    payload: Mapping[str, Any], family: str, book: SignatureBook
) -> tuple[Mapping[str, Any], str | None]:
    """``payload`` with only the thinking blocks a provider of ``family`` can verify, and a note.

    Returns ``payload`` itself and ``None`` when every block is the family's own and no open
    tool loop lacks its leading thinking block (see :func:`_open_loop_lacks_thinking`).
    """
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return payload, None
    kept: list[Any] | None = None  # the new messages, once one changed
    dropped: Counter[str] = Counter()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        blocks = []
        for block in content:
            if isinstance(block, dict) and block.get("type") in _THINKING:
                ok, origin = _origin(block, family, book)
                if not ok:
                    dropped[origin] += 1
                    continue
            blocks.append(block)
        if len(blocks) != len(content):
            kept = list(messages) if kept is None else kept
            kept[i] = {**message, "content": blocks} if blocks else None
    open_loop_lacks = _open_loop_lacks_thinking(payload, messages, kept or messages)
    if kept is None and not open_loop_lacks:
        return payload, None
    body = {**payload, "messages": [m for m in (kept or messages) if m is not None]}
    notes = []
    if dropped:
        each = ", ".join(f"{origin}: {n}" for origin, n in sorted(dropped.items()))
        notes.append(f"{sum(dropped.values())} thinking block(s) {family!r} cannot verify dropped ({each})")
    if open_loop_lacks:
        _without_thinking(body)
        notes.append(
            "sent without thinking: the open tool loop's last assistant message does not start with a thinking block"
        )
    return body, "; ".join(notes)


def _open_loop_assistant(messages: list[Any]) -> int | None:
    """The index of the assistant message the request's ending ``tool_result`` answers, if any.

    The request's last turn is its trailing user messages (the API joins consecutive ones:
    Claude Code sends a tool result and the user's interjection as two), with system messages
    between them left aside (they are folded away or sent apart); the loop is open when one
    of them holds a ``tool_result``, and the message before them is the assistant's.
    """
    k = len(messages) - 1
    answers = False
    while k >= 0 and isinstance(messages[k], dict) and messages[k].get("role") in ("user", "system"):
        content = messages[k].get("content")
        if messages[k].get("role") == "user" and isinstance(content, list):
            answers = answers or any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        k -= 1
    if not answers or k < 0:
        return None
    before = messages[k]
    return k if isinstance(before, dict) and before.get("role") == "assistant" else None


def _starts_with_thinking(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return (
        bool(content)
        and isinstance(content, list)
        and isinstance(content[0], dict)
        and content[0].get("type") in _THINKING
    )


def _open_loop_lacks_thinking(payload: Mapping[str, Any], before: list[Any], after: list[Any]) -> bool:
    """Thinking is ``enabled`` and the open tool loop's last assistant message does not start with it.

    Anthropic's API (and every signing family) answers that with a 400, and says "to avoid this
    requirement, disable thinking". Its thinking may have been dropped here (another family's),
    or by the client: Claude Code leaves out the thinking of a message another model wrote (a
    provider that answered under its own model name), so a tool loop begun on one provider and
    continued on another arrives so. Thinking goes for that one request; the loop goes on.
    """
    thinking = payload.get("thinking")
    if not (isinstance(thinking, dict) and thinking.get("type") == "enabled"):
        return False
    k = _open_loop_assistant(before)
    return k is not None and not _starts_with_thinking(after[k])


def _without_thinking(body: dict[str, Any]) -> None:
    """Thinking off for this request: ``thinking`` goes, and the context edit that needs it."""
    del body["thinking"]
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    if not isinstance(edits, list):
        return
    rest = [
        e for e in edits if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))
    ]
    if len(rest) == len(edits):
        return
    if rest:
        body["context_management"] = {**management, "edits": rest}  # type: ignore[dict-item]
    else:
        del body["context_management"]
