"""Signed requests between the enforcer and the nodes: HMAC-SHA256 over method, path, node,
timestamp, nonce and body, with a bounded clock skew and remembered nonces, so a request cannot
be forged, altered, delayed past the skew, replayed, or taken to another node. Responses are
signed the same way (method `RESPONSE`), so a node only applies a policy that came from the
enforcer.

Each node has its own key, derived from the enforcer's master key and the node's name (HKDF,
RFC 5869): a node knows only its own, so root on one node can sign nothing for another. The
enforcer derives any node's key when it needs it. Every side may hold two keys during a
rotation: it signs with the first and accepts either."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cachetools import LRUCache
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TIMESTAMP = "X-Gpuacct-Timestamp"
NONCE = "X-Gpuacct-Nonce"
NODE = "X-Gpuacct-Node"
SIGNATURE = "X-Gpuacct-Signature"
_SALT = b"gpuacct node key v1"


class SignatureError(Exception):
    """Why a signed message is refused; safe to send back to the caller."""


def node_key(master: bytes, node: str) -> bytes:
    """The key of `node`, as the enforcer derives it from its master key (64 hex digits, the
    text a node keeps in its key file)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=node.encode())
    return derived.derive(master).hex().encode()


def _digest(key: bytes, method: str, path: str, node: str, timestamp: str, nonce: str,
            body: bytes) -> str:
    message = "\n".join([method.upper(), path, node, timestamp, nonce,
                         hashlib.sha256(body).hexdigest()])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, node: str, method: str, path: str, body: bytes,
         now: float | None = None) -> dict[str, str]:
    """The headers that authenticate this message, for or from `node`."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    return {TIMESTAMP: timestamp, NONCE: nonce, NODE: node,
            SIGNATURE: _digest(key, method, path, node, timestamp, nonce, body)}


class Verifier:
    """Checks signatures with the keys `keys_for(node)` gives; remembers each nonce for as long
    as its timestamp is acceptable."""

    def __init__(self, keys_for: Callable[[str], Sequence[bytes]],
                 max_skew_seconds: float = 30.0) -> None:
        self._keys_for = keys_for
        self._skew = max_skew_seconds
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: float | None = None, node: str | None = None) -> str:
        """The node the message was signed for; `node`: it must be that one."""
        # Header names arrive in any case (HTTP/1.1 servers and clients differ).
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp, nonce, signed_node, signature = (
            lower.get(h.lower(), "") for h in (TIMESTAMP, NONCE, NODE, SIGNATURE))
        if not (timestamp and nonce and signed_node and signature):
            raise SignatureError(f"unsigned: {TIMESTAMP}, {NONCE}, {NODE} and {SIGNATURE} "
                                 "are required")
        if node is not None and signed_node != node:
            raise SignatureError(f"signed for node {signed_node!r}, not for {node!r}")
        try:
            sent = float(timestamp)
        except ValueError:
            raise SignatureError(f"{TIMESTAMP} is not a number") from None
        if not any(hmac.compare_digest(
                _digest(key, method, path, signed_node, timestamp, nonce, body), signature)
                for key in self._keys_for(signed_node)):
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
        return signed_node


class NodeIdentity:
    """A node's side: its name and its keys (the first signs, any verifies). It accepts only
    messages signed for itself."""

    def __init__(self, node: str, keys: Sequence[bytes], max_skew_seconds: float) -> None:
        self.node, self.keys = node, tuple(keys)
        self._verifier = Verifier(lambda _: self.keys, max_skew_seconds)

    def rotate(self, keys: Sequence[bytes]) -> None:
        """New keys (a reload during a rotation); the remembered nonces stay."""
        if not keys:
            raise ValueError("a node needs a key")
        self.keys = tuple(keys)

    def sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign(self.keys[0], self.node, method, path, body)

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        return self._verifier.verify(method, path, headers, body, node=self.node)


class MasterKeys:
    """The enforcer's side: every node's keys, derived from the master keys (the first signs,
    any verifies). `enrolled`: whether a node may sign at all (the node inventory); None:
    every node the master key derives a key for."""

    def __init__(self, masters: Sequence[bytes], max_skew_seconds: float,
                 enrolled: Callable[[str], bool] | None = None) -> None:
        self.masters = tuple(masters)
        self.enrolled = enrolled
        # Bounded: any caller can name any node.
        self._derived: LRUCache[tuple[bytes, str], bytes] = LRUCache(maxsize=4096)
        self._verifier = Verifier(self.keys_for, max_skew_seconds)

    def rotate(self, masters: Sequence[bytes]) -> None:
        """New master keys (a reload during a rotation); the remembered nonces stay."""
        if not masters:
            raise ValueError("the enforcer needs a master key")
        self.masters = tuple(masters)

    def keys_for(self, node: str) -> list[bytes]:
        keys = []
        for master in self.masters:
            if (master, node) not in self._derived:  # HKDF per message would be wasted work
                self._derived[(master, node)] = node_key(master, node)
            keys.append(self._derived[(master, node)])
        return keys

    def sign(self, node: str, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign(self.keys_for(node)[0], node, method, path, body)

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               node: str | None = None) -> str:
        """The node that signed it (`node`: it must be that one), if it is enrolled."""
        signer = self._verifier.verify(method, path, headers, body, node=node)
        if self.enrolled is not None and not self.enrolled(signer):
            raise SignatureError(f"node {signer!r} is not enrolled (gpuacct-admin node add)")
        return signer
