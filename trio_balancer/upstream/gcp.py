"""Google OAuth access tokens for Vertex AI, with google-auth, off the Trio thread.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
user login, the metadata server on Google Cloud) or a service account's JSON key
(``service_account_file``). Getting a token is an HTTP call (the service account's signed JWT
to its ``token_uri``, or the metadata server) through google-auth's ``requests`` transport, so
it runs in a worker thread, one at a time per provider, and a token is refreshed
:data:`REFRESH_MARGIN_S` before it expires so that no request waits on a refresh it could have
avoided and none goes out with a token about to lapse.

A fetch is bounded by ``deadline`` seconds, both here (the request waiting on it gives up: its
provider fails over) and in google-auth's HTTP call (so the abandoned thread ends too, instead
of holding a worker thread for google-auth's own two minutes). Each provider's fetches run on a
thread limiter of their own, one at a time, never on Trio's shared pool.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

import trio

from trio_balancer.logging import get_logger
from trio_balancer.upstream.credentials import CredentialsUnavailable

__all__ = ["REFRESH_MARGIN_S", "SCOPES", "GoogleTokenSource"]

log = get_logger("trio_balancer.upstream.gcp")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN_S = 300.0


class GoogleTokenSource:
    """One Vertex provider's credentials, and the access token they give."""

    def __init__(
        self, provider_name: str, service_account_file: str | None = None, *, deadline: float = 20.0
    ) -> None:
        self.provider_name = provider_name
        self.service_account_file = service_account_file
        self.deadline = deadline
        self._threads = trio.CapacityLimiter(1)
        self._credentials: Any = None  # google.auth.credentials.Credentials
        self._lock = trio.Lock()
        self.refreshes = 0  # tokens fetched (tests and the debug log read it)

    async def token(self) -> str:
        """A valid access token, fetched or refreshed in a thread when it is due."""
        if self._due():
            with trio.move_on_after(self.deadline) as waited:
                async with self._lock:
                    if self._due():  # another task may have refreshed while this one waited
                        await trio.to_thread.run_sync(
                            self._refresh, abandon_on_cancel=True, limiter=self._threads
                        )
            if waited.cancelled_caught:
                raise CredentialsUnavailable(
                    f"provider {self.provider_name!r}: no Google token within {self.deadline:g} s"
                )
        token = self._credentials.token
        assert isinstance(token, str)
        return token

    def _due(self) -> bool:
        creds = self._credentials
        if creds is None or not creds.token:
            return True
        expiry = creds.expiry  # naive UTC, google-auth's convention
        if expiry is None:
            return False
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        left: float = (expiry - now).total_seconds()
        return left < REFRESH_MARGIN_S

    def _refresh(self) -> None:
        """Run in a thread: load the credentials once, then fetch a token."""
        import google.auth
        import google.auth.exceptions
        import requests
        from google.auth.transport.requests import Request

        session = requests.Session()  # closed here: google-auth's default one never is
        try:
            if self._credentials is None:
                self._credentials = self._load()
            # google-auth's Request takes a timeout per call, which refresh() does not pass.
            request = functools.partial(Request(session), timeout=self.deadline)
            self._credentials.refresh(request)
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            # google-auth's messages can quote a token endpoint's answer; the class name cannot.
            raise CredentialsUnavailable(
                f"provider {self.provider_name!r}: Google credentials: {type(exc).__name__}"
            ) from None
        finally:
            session.close()
        self.refreshes += 1
        log.info("gcp.token", provider=self.provider_name, expiry=str(self._credentials.expiry))

    def _load(self) -> Any:
        import google.auth
        from google.oauth2 import service_account

        if self.service_account_file:
            return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                self.service_account_file, scopes=list(SCOPES)
            )
        credentials, _project = google.auth.default(scopes=list(SCOPES))
        return credentials
