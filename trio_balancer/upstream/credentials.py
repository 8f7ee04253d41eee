"""What a cloud family raises when it has no credentials to sign with.

The flight turns it into an authentication failure of that provider (it fails over, and
health cools the provider down): a missing role or an expired service account is the
operator's to fix, never the client's.
"""

from __future__ import annotations

__all__ = ["CredentialsUnavailable"]


class CredentialsUnavailable(Exception):
    """A cloud provider's credentials could not be found or refreshed; the message says why,
    without any secret."""
