"""The simulator's Vertex AI dialect: the service-account token flow and Vertex's paths.

:func:`vertex_answer` and :func:`token_answer` answer on the exchange ``tools/simulator.py``
hands them; the rest is pure. ``POST /token`` is an OAuth token endpoint for the
service-account flow: it takes the JWT bearer assertion google-auth signs with the account's
private key, checks it against the public keys the simulator was given (``Simulator(
google_keys=...)``; :func:`make_service_account` writes a key file and returns its public key),
and answers an access token the simulator then requires on
``/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:{action}``.
Errors come in Google's shape, except the model's own (529 overloaded, a prompt over the
window), which are Anthropic's, as on Vertex.
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

from trio_balancer.protocol.cloud_models import anthropic_model_name
from trio_balancer.protocol.tokens import estimate_request
from trio_balancer.tools.sim_anthropic import (
    anthropic_body_problem,
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    anthropic_too_long,
    tool_names,
    tool_results,
)
from trio_balancer.tools.sim_common import (
    Exchange,
    FaultShape,
    Header,
    Request,
    SimState,
    after_tool_results,
    fault_preamble,
    google_error,
    json_object,
)

__all__ = [
    "check_assertion",
    "google_error_answer",
    "is_vertex_path",
    "make_service_account",
    "token_answer",
    "vertex_answer",
    "vertex_route",
]

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


def google_error_answer(status: int, message: str | None = None) -> dict[str, Any]:
    """Vertex's own error answer (Google's shape, Vertex's usual messages)."""
    return google_error(status, _GOOGLE_ERRORS, message)


def _error(status: int) -> tuple[list[Header], Any]:
    if status == 529:  # the model's own overload: Anthropic's shape, as Vertex relays it
        return [], anthropic_error(529)
    return [], google_error_answer(status)


VERTEX_FAULTS = FaultShape(error=_error, too_long=anthropic_too_long)  # the model's "too long"
_COUNT_PATH = "/models/count-tokens:rawPredict"


async def token_answer(sim: SimState, ex: Exchange, request: Request) -> None:
    """The OAuth token endpoint a service account's JWT assertion is exchanged at."""
    sim.token_requests += 1
    audience = f"http://{request.headers.get('host', '')}/token"
    answer, problem = check_assertion(request.body, sim.google_keys, audience)
    if answer is None:
        return await ex.send(400, {"error": problem.split(":")[0], "error_description": problem})
    sim.google_tokens.add(answer["access_token"])
    await ex.send(200, answer)


def is_vertex_path(path: str) -> bool:
    return vertex_route(path) is not None or path.endswith(_COUNT_PATH)


async def vertex_answer(sim: SimState, ex: Exchange, request: Request) -> None:
    """rawPredict / streamRawPredict / count-tokens, with a token the endpoint issued."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if sim.google_keys and bearer not in sim.google_tokens:
        return await ex.send(401, google_error_answer(401))
    opts = sim.defaults.with_headers(request.headers)
    payload = json_object(request.body)
    counting = request.path.endswith(_COUNT_PATH)
    problem = "body is not JSON" if payload is None else anthropic_body_problem(
        payload, version="vertex-2023-10-16", forbidden=() if counting else ("model",),
        extra="{field}: Extra inputs are not permitted",
    )  # fmt: skip
    if problem is not None:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
        return await ex.send(400, error)
    assert payload is not None
    input_tokens = estimate_request(payload)
    route = vertex_route(request.path)
    model = anthropic_model_name(route[2]) if route is not None else ""
    window = 0 if counting else sim.windows.get(model, opts.context_window)
    if await fault_preamble(ex, opts, VERTEX_FAULTS, input_tokens=input_tokens, window=window):
        return
    if counting or route is None:
        return await ex.send(200, {"input_tokens": input_tokens})
    opts = after_tool_results(opts, tool_results(payload), tool_names(payload))
    if route[3] == "rawPredict" or not payload.get("stream"):
        return await ex.send(200, anthropic_message(opts, model, input_tokens), trickle=opts.trickle)
    await ex.send_stream(opts, anthropic_stream(opts, model, input_tokens))


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
