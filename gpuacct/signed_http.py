"""One signed HTTP exchange between the enforcer and a node: the request is signed, and the
answer is used only if it is signed too, by the same node's key (see gpuacct.signing)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping

from gpuacct import http
from gpuacct.signing import SignatureError

Sign = Callable[[str, str, bytes], dict[str, str]]  # method, path, body -> headers
Check = Callable[[str, str, Mapping[str, str], bytes], object]  # raises SignatureError


class ExchangeError(Exception):
    """The peer could not be reached (`status` None), refused the request (`status` and its
    `detail`), or answered unsigned."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


def exchange(base_url: str, method: str, path: str, body: bytes, sign: Sign, check: Check,
             timeout: float, tls: ssl.SSLContext | None = None) -> bytes:
    headers = {"Content-Type": "application/json", **sign(method, path, body)}
    try:
        response = http.request(method, base_url.rstrip("/") + path, timeout, body, headers,
                                tls=tls)
    except http.HttpError as exc:
        raise ExchangeError(f"{base_url}{path}: {exc}", exc.status, exc.reason) from None
    answer = response.body
    try:
        check("RESPONSE", path, response.headers, answer)
    except SignatureError as exc:
        raise ExchangeError(f"{base_url}{path}: answer refused: {exc}") from None
    return answer
