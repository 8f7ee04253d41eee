"""Which requests may share one upstream response, and the cache of completed ones.

Signature: a hash of everything in the request that can change the answer (every body field
except ``stream`` and ``metadata``, the endpoint, the query string, the ``anthropic-version``
and ``anthropic-beta`` headers) plus the identity of the client. The volatile values of Claude
Code's billing header (``cch=``, new each request in some versions) are left out
(``protocol/billing.py``): they do not change the answer, and would make every turn unique.
Requests from different clients never share, whatever they ask: a response is only ever replayed to the key that
asked for it.

The digest is SHA-256 over the endpoint, headers and identity as JSON, then the body's fields
pickled (protocol 5): pickling a parsed 50 KB Claude Code body takes about 35 us, sorting and
re-encoding it as canonical JSON about 570 us (bench/RESULTS.md, issue 20). The top-level
fields are signed in sorted order; inside them the digest follows the body's own key order,
so two requests alike but for the order of nested keys do not share; identical requests (a
retry, the same prompt twice) are byte-identical and do. A pickle without its memo (so shared
objects and equal copies read alike) is an unambiguous encoding of str, int, float, bool, None,
list and dict, so different bodies never share a signature; instances on different Python
versions might sign alike bodies differently, which only costs them a shared cache hit.

The cache keeps completed responses (ended with ``message_stop``, or a complete JSON body; never
errors or cut streams) for a TTL, in an LRU bounded in bytes. The clock is passed in.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from trio_balancer.protocol.billing import without_billing_volatile

__all__ = ["NOT_SIGNED", "CachedResponse", "ResponseCache", "signature"]

NOT_SIGNED = frozenset({"stream", "metadata"})
_SIGNED_HEADERS = (b"anthropic-version", b"anthropic-beta")


def signature(
    payload: Mapping[str, Any],
    *,
    path: str,
    query: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    identity: str,
    include_max_tokens: bool = True,
) -> str:
    skip = NOT_SIGNED if include_max_tokens else NOT_SIGNED | {"max_tokens"}
    body = {k: v for k, v in sorted(without_billing_volatile(payload).items()) if k not in skip}
    signed_headers = sorted(
        (n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n in _SIGNED_HEADERS
    )
    where = json.dumps([identity, path, query.decode("latin-1"), signed_headers], ensure_ascii=False)
    digest = hashlib.sha256(where.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    pickler = pickle.Pickler(_Digest(digest), protocol=5)
    # No memo: the bytes depend on the values alone, never on which are one object. The pickle
    # docs call ``fast`` deprecated (it breaks self-referencing objects, which JSON cannot
    # make); should it ever stop working, test_signature_reads_values_not_objects fails.
    pickler.fast = True
    pickler.dump(body)
    return digest.hexdigest()


@attrs.define
class _Digest:
    """A file that hashes what is written to it: the pickle is never held whole."""

    hasher: Any

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return len(data)


@attrs.frozen
class CachedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: tuple[bytes, ...]
    sse: bool
    size: int
    expires: float
    provider: str | None = None
    upstream_model: str | None = None


class ResponseCache:
    """Completed responses by signature, for ``ttl_s``; the oldest go first past ``max_bytes``
    (or ``max_items``, for a cache of many tiny answers such as token counts)."""

    def __init__(self, *, ttl_s: float, max_bytes: int, max_items: int | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[str, CachedResponse] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> CachedResponse | None:
        item = self._items.get(key)
        if item is None or now >= item.expires:
            if item is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(
        self,
        key: str,
        now: float,
        *,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: Sequence[bytes],
        sse: bool,
        provider: str | None = None,
        upstream_model: str | None = None,
    ) -> bool:
        size = sum(len(c) for c in chunks) + sum(len(n) + len(v) for n, v in headers) + 256
        if size > self.max_bytes or self.ttl_s <= 0:
            return False
        if key in self._items:
            self._drop(key)
        self._items[key] = CachedResponse(
            status, headers, tuple(chunks), sse, size, now + self.ttl_s, provider, upstream_model
        )
        self.bytes += size
        while self.bytes > self.max_bytes or (self.max_items is not None and len(self) > self.max_items):
            oldest = next(iter(self._items))
            self._drop(oldest)
        return True

    def _drop(self, key: str) -> None:
        item = self._items.pop(key)
        self.bytes -= item.size
