"""Signed requests between the enforcer and the nodes: HMAC-SHA256 over method, path, timestamp,
nonce and body, with a bounded clock skew and remembered nonces, so a request cannot be forged,
altered, delayed past the skew or replayed. Responses are signed the same way (method
`RESPONSE`), so a node only applies a policy that came from the enforcer."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping

TIMESTAMP = "X-Gpuacct-Timestamp"
NONCE = "X-Gpuacct-Nonce"
SIGNATURE = "X-Gpuacct-Signature"


class SignatureError(Exception):
    """Why a signed message is refused; safe to send back to the caller."""


def _digest(key: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = "\n".join([method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, path: str, body: bytes,
         now: float | None = None) -> dict[str, str]:
    """The headers that authenticate this message."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    return {TIMESTAMP: timestamp, NONCE: nonce,
            SIGNATURE: _digest(key, method, path, timestamp, nonce, body)}


class Verifier:
    """Checks signatures; remembers each nonce for as long as its timestamp is acceptable."""

    def __init__(self, key: bytes, max_skew_seconds: float = 30.0) -> None:
        self._key = key
        self._skew = max_skew_seconds
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: float | None = None) -> None:
        # Header names arrive in any case (HTTP/1.1 servers and clients differ).
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp, nonce, signature = (lower.get(h.lower(), "")
                                       for h in (TIMESTAMP, NONCE, SIGNATURE))
        if not (timestamp and nonce and signature):
            raise SignatureError(f"unsigned: {TIMESTAMP}, {NONCE} and {SIGNATURE} are required")
        try:
            sent = float(timestamp)
        except ValueError:
            raise SignatureError(f"{TIMESTAMP} is not a number") from None
        expected = _digest(self._key, method, path, timestamp, nonce, body)
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("bad signature: wrong key, or the message was altered")
        now = time.time() if now is None else now
        if abs(now - sent) > self._skew:
            raise SignatureError(f"stale: signed {now - sent:+.0f}s from now, "
                                 f"more than {self._skew:g}s apart (check the clocks)")
        with self._lock:
            for old, expires in list(self._seen.items()):
                if expires < now:
                    del self._seen[old]
            if nonce in self._seen:
                raise SignatureError("replayed: this nonce was used before")
            self._seen[nonce] = sent + self._skew
