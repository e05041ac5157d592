"""One signed HTTP exchange between the enforcer and a node: the request is signed, and the
answer is used only if it is signed too (see gpuacct.signing)."""

from __future__ import annotations

import urllib.error
import urllib.request

from gpuacct.signing import SignatureError, Verifier, sign


class ExchangeError(Exception):
    """The peer could not be reached, refused the request, or answered unsigned."""


def exchange(base_url: str, method: str, path: str, body: bytes, key: bytes,
             verifier: Verifier, timeout: float) -> bytes:
    headers = {"Content-Type": "application/json", **sign(key, method, path, body)}
    request = urllib.request.Request(base_url.rstrip("/") + path, data=body, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: bytes = response.read()
            answer_headers = dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode(errors="replace").strip()
        raise ExchangeError(f"{base_url}{path}: HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise ExchangeError(f"{base_url}{path}: {exc}") from None
    try:
        verifier.verify("RESPONSE", path, answer_headers, answer)
    except SignatureError as exc:
        raise ExchangeError(f"{base_url}{path}: answer refused: {exc}") from None
    return answer
