"""Client keys and admin access. Pure: headers and addresses in, an identity or an error out.

Keys are stored only as SHA-256 hex digests in the config; a presented key is hashed and
compared with every configured digest using ``hmac.compare_digest``, so the time taken does
not depend on which key (if any) matched or where two digests first differ.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Sequence

import attrs

from .errors import AuthenticationFailed, PermissionDenied

__all__ = ["KEY_PREFIX", "ClientKey", "KeyRing", "is_loopback", "new_key", "presented_key"]

KEY_PREFIX = "tb-"


@attrs.frozen
class ClientKey:
    name: str
    sha256: str
    models: tuple[str, ...] = ()  # allow-list of model globs; empty: every model
    max_concurrent: int | None = None
    requests_per_minute: int | None = None

    def __repr__(self) -> str:
        return f"ClientKey(name={self.name!r})"


def new_key() -> tuple[str, str]:
    """A fresh key and its digest: the key goes to the user, the digest into the config."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a client sent: ``x-api-key``, or ``Authorization: Bearer``."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key" and value.strip():
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip() or None
    return bearer


def is_loopback(client: Sequence[object] | None) -> bool:
    if not client:
        return False  # a unix socket or an unknown peer is not trusted as local
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


class KeyRing:
    def __init__(self, keys: Sequence[ClientKey], admin_sha256: str | None = None) -> None:
        self.keys = tuple(keys)
        self.admin_sha256 = admin_sha256

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> ClientKey:
        """The client key the request carries; raises AuthenticationFailed when none matches."""
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "this balancer requires a client key (x-api-key or Authorization: Bearer)"
            )
        digest = hashlib.sha256(key).hexdigest()
        found = None
        for candidate in self.keys:  # every digest is compared, match or not
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        if found is None:
            raise AuthenticationFailed("invalid client key")
        return found

    def check_admin(self, headers: Iterable[tuple[bytes, bytes]], client: Sequence[object] | None) -> None:
        """Admin endpoints: the admin key if one is configured, else loopback clients only."""
        if self.admin_sha256 is None:
            if not is_loopback(client):
                raise PermissionDenied(
                    "admin endpoints answer only on loopback unless an admin key is configured"
                )
            return
        key = presented_key(headers)
        digest = hashlib.sha256(key or b"").hexdigest()
        if key is None or not hmac.compare_digest(self.admin_sha256, digest):
            raise AuthenticationFailed("admin endpoints require the admin key")
