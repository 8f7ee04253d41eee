"""AWS credentials and SigV4 signing for Bedrock, with botocore, off the Trio thread.

botocore resolves credentials the way every AWS tool does (environment variables, the shared
config and credentials files with ``profile``, SSO, a container or instance role) and signs with
SigV4. Resolving and refreshing may do network I/O (the instance metadata service, STS) and
read files, so it runs in a worker thread, once at a time per provider; signing itself is pure
and runs here. Temporary credentials are refreshed before they expire (botocore's own margin).
"""

from __future__ import annotations

from typing import Any

import trio

from trio_balancer.logging import get_logger
from trio_balancer.upstream.credentials import CredentialsUnavailable

__all__ = ["AwsSigner"]

log = get_logger("trio_balancer.upstream.aws")
SERVICE = "bedrock"


class AwsSigner:
    """One Bedrock provider's credentials and signer."""

    def __init__(self, provider_name: str, region: str, profile: str | None = None) -> None:
        self.provider_name = provider_name
        self.region = region
        self.profile = profile
        self._credentials: Any = None  # botocore Credentials (maybe refreshable)
        self._lock = trio.Lock()

    async def sign(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[list[tuple[bytes, bytes]], tuple[str, ...]]:
        """``headers`` with the SigV4 ones added, and the secrets they were made from."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        frozen = await self._frozen()
        request = AWSRequest(
            method=method,
            url=url,
            data=body,
            headers={n.decode("latin-1"): v.decode("latin-1") for n, v in headers},
        )
        SigV4Auth(frozen, SERVICE, self.region).add_auth(request)
        signed = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request.headers.items()]
        secrets = tuple(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s)
        return signed, secrets

    async def _frozen(self) -> Any:
        """Frozen credentials: resolved the first time, refreshed near expiry, both in a thread."""
        if self._credentials is None or _refresh_needed(self._credentials):
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await trio.to_thread.run_sync(self._resolve, abandon_on_cancel=True)
                elif _refresh_needed(self._credentials):
                    await trio.to_thread.run_sync(self._refresh, abandon_on_cancel=True)
        return self._credentials.get_frozen_credentials()

    def _refresh(self) -> None:
        """Run in a thread: botocore refreshes refreshable credentials when they are frozen."""
        import botocore.exceptions

        try:
            self._credentials.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise CredentialsUnavailable(
                f"provider {self.provider_name!r}: AWS credentials refresh: {type(exc).__name__}"
            ) from None

    def _resolve(self) -> Any:
        """Run in a thread: the credential chain (or the profile), as botocore resolves it."""
        import botocore.exceptions
        import botocore.session

        try:
            session = botocore.session.Session(profile=self.profile)
            creds = session.get_credentials()
            if creds is not None:
                creds.get_frozen_credentials()  # a refreshable chain fetches here
        except botocore.exceptions.BotoCoreError as exc:
            raise CredentialsUnavailable(
                f"provider {self.provider_name!r}: AWS credentials: {type(exc).__name__}"
            ) from None
        if creds is None:
            where = f"profile {self.profile!r}" if self.profile else "the AWS credential chain"
            raise CredentialsUnavailable(
                f"provider {self.provider_name!r}: no AWS credentials found in {where}"
            )
        log.info("aws.credentials", provider=self.provider_name, method=getattr(creds, "method", "?"))
        return creds


def _refresh_needed(creds: Any) -> bool:
    """Refreshable credentials near expiry (botocore's advisory margin); static ones never."""
    check = getattr(creds, "refresh_needed", None)
    return bool(check()) if callable(check) else False
