"""One signed HTTP exchange between the enforcer and a node: the request is signed, and the
answer is used only if it is signed too (see gpuacct.signing)."""

from __future__ import annotations

from gpuacct import http
from gpuacct.signing import SignatureError, Verifier, sign


class ExchangeError(Exception):
    """The peer could not be reached, refused the request, or answered unsigned."""


def exchange(base_url: str, method: str, path: str, body: bytes, key: bytes,
             verifier: Verifier, timeout: float) -> bytes:
    headers = {"Content-Type": "application/json", **sign(key, method, path, body)}
    try:
        response = http.request(method, base_url.rstrip("/") + path, timeout, body, headers)
    except http.HttpError as exc:
        raise ExchangeError(f"{base_url}{path}: {exc}") from None
    answer = response.body
    try:
        verifier.verify("RESPONSE", path, response.headers, answer)
    except SignatureError as exc:
        raise ExchangeError(f"{base_url}{path}: answer refused: {exc}") from None
    return answer
