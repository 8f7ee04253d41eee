"""The simulator's Vertex AI dialect: the service-account token flow and Vertex's paths. Pure.

``tools/simulator.py`` does the I/O. ``POST /token`` is an OAuth token endpoint for the
service-account flow: it takes the JWT bearer assertion google-auth signs with the account's
private key, checks it against the public keys the simulator was given (``Simulator(
google_keys=...)``; :func:`make_service_account` writes a key file and returns its public key),
and answers an access token the simulator then requires on
``/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:{action}``.
Errors come in Google's shape, except the model's own (529 overloaded), which is Anthropic's,
as on Vertex.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

__all__ = ["check_assertion", "google_error_answer", "make_service_account", "vertex_route"]

_ROUTE = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/anthropic/models/"
    r"(?P<model>[^/:]+):(?P<action>rawPredict|streamRawPredict)"
)
_GOOGLE_ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument (simulated)."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied (simulated)."),
    404: ("NOT_FOUND", "Publisher model was not found or your project does not have access to it."),
    429: (
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model (simulated).",
    ),
    500: ("INTERNAL", "Internal error encountered (simulated)."),
    503: ("UNAVAILABLE", "The service is currently unavailable (simulated)."),
    504: ("DEADLINE_EXCEEDED", "Deadline exceeded (simulated)."),
}


def vertex_route(path: str) -> tuple[str, str, str, str] | None:
    """``(project, region, model, action)`` of a Vertex publisher-model path, else None."""
    m = _ROUTE.fullmatch(path)
    return (m["project"], m["region"], m["model"], m["action"]) if m else None


def google_error_answer(status: int) -> dict[str, Any]:
    name, message = _GOOGLE_ERRORS.get(status, _GOOGLE_ERRORS[500 if status >= 500 else 400])
    return {"error": {"code": status, "message": message, "status": name}}


def check_assertion(form: bytes, keys: Mapping[str, str], audience: str) -> tuple[dict[str, Any] | None, str]:
    """The token answer for a JWT-bearer grant, or None and what is wrong with it."""
    import google.auth.exceptions
    from google.auth import jwt

    fields = parse_qs(form.decode("latin-1"))
    if fields.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
        return None, "unsupported_grant_type"
    assertion = (fields.get("assertion") or [""])[0]
    try:
        claims = jwt.decode(assertion, verify=False)  # type: ignore[no-untyped-call]
        email = str(claims.get("iss", ""))
        if email not in keys:
            return None, "invalid_grant: unknown service account"
        # google-auth addresses the assertion to Google's token endpoint whatever token_uri says.
        audiences = [audience, "https://oauth2.googleapis.com/token"]
        claims = jwt.decode(assertion, certs=keys[email], audience=audiences)  # type: ignore[no-untyped-call]
    except (google.auth.exceptions.GoogleAuthError, ValueError) as exc:
        return None, f"invalid_grant: {exc}"
    if "cloud-platform" not in str(claims.get("scope", "")):
        return None, "invalid_scope"
    token = "ya29.sim-" + secrets.token_urlsafe(24)
    return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}, ""


def make_service_account(
    path: Path, token_uri: str, email: str = "sim@sim-project.iam.gserviceaccount.com"
) -> tuple[str, str]:
    """Write a service-account key file for the simulator's token endpoint; ``(email, public PEM)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "sim-project",
        "private_key_id": f"sim{int(time.time())}",
        "private_key": private,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return email, public
