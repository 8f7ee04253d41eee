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
import socket
from collections.abc import Iterable, Sequence

from trio_balancer.config import ClientKey
from trio_balancer.errors import AuthenticationFailed, PermissionDenied

__all__ = [
    "KEY_PREFIX",
    "ClientKey",
    "KeyRing",
    "check_browser_reach",
    "header",
    "is_loopback",
    "is_loopback_name",
    "new_key",
    "presented_key",
]

KEY_PREFIX = "tb-"


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


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _host_part(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the host, lower case, without brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else ""
    if authority.count(":") == 1:
        authority = authority.rsplit(":", 1)[0]
    return authority.rstrip(".")


def is_loopback_name(host: str, allowed: Iterable[str] = ()) -> bool:
    """A name or address that only reaches this machine, or one the operator listed.

    ``localhost`` and ``*.localhost`` (RFC 6761: resolvers, browsers included, answer loopback
    for them), 127.0.0.0/8 and ::1. Any other name may resolve anywhere, which is how DNS
    rebinding reaches a loopback service from a web page.
    """
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if host in {a.lower() for a in allowed}:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the other spellings of IPv4 that clients accept: 127.1, 0x7f.1, 2130706433
            return socket.inet_aton(host)[0] == 127
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_browser_reach(
    headers: Iterable[tuple[bytes, bytes]], *, check_host: bool, allowed_hosts: Sequence[str] = ()
) -> None:
    """Refuse what a web page could send to a balancer that trusts loopback.

    With no client key to present, a page the operator visits can still make the browser post
    to ``127.0.0.1`` (a cross-site "simple" request carries no preflight), or rebind a name of
    its own to 127.0.0.1 and read the answers. Browsers always name the page's origin in
    ``Origin`` on such requests, and always send the name they resolved in ``Host``; so: an
    ``Origin`` that is not loopback is refused, and (``check_host``) so is a ``Host`` that is
    not a loopback name or one the operator lists. Clients that are not browsers (Claude Code,
    the SDKs, curl) send no ``Origin`` and the address they connect to as ``Host``.
    """
    headers = list(headers)
    origin = header(headers, b"origin")
    if origin is not None:
        text = origin.decode("latin-1").strip()
        scheme, _, rest = text.partition("://")
        if scheme not in ("http", "https") or not is_loopback_name(
            _host_part(rest.split("/", 1)[0]), allowed_hosts
        ):
            raise PermissionDenied(
                "requests from web pages are refused: this balancer trusts loopback clients, and a page's"
                " Origin is not loopback"
            )
    if check_host:
        host = header(headers, b"host")
        if host is not None and not is_loopback_name(_host_part(host.decode("latin-1")), allowed_hosts):
            raise PermissionDenied(
                "the Host header names neither a loopback address nor a name in [server] allowed_hosts"
            )


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
