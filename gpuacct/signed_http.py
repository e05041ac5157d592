"""One signed HTTP exchange between the enforcer and a node: the request is signed, and the
answer is used only if it is signed too (see gpuacct.signing)."""

from __future__ import annotations

from gpuacct import http
from gpuacct.signing import SignatureError, Verifier, sign


class ExchangeError(Exception):
    """The peer could not be reached (`status` None), refused the request (`status` and its
    `detail`), or answered unsigned."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


def exchange(base_url: str, method: str, path: str, body: bytes, key: bytes,
             verifier: Verifier, timeout: float) -> bytes:
    headers = {"Content-Type": "application/json", **sign(key, method, path, body)}
    try:
        response = http.request(method, base_url.rstrip("/") + path, timeout, body, headers)
    except http.HttpError as exc:
        raise ExchangeError(f"{base_url}{path}: {exc}", exc.status, exc.reason) from None
    answer = response.body
    try:
        verifier.verify("RESPONSE", path, response.headers, answer)
    except SignatureError as exc:
        raise ExchangeError(f"{base_url}{path}: answer refused: {exc}") from None
    return answer
