"""Secrets in the config: a literal, `{env: NAME}` or `{file: PATH}`, resolved at load time.

Resolving at load time means a missing variable or unreadable file fails start-up with the key's
path, like any other bad value, and the value then lives only in a `SecretStr` (never logged).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr


def resolve_secret(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    if set(raw) == {"env"}:
        name = str(raw["env"])
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if set(raw) == {"file"}:
        path = Path(str(raw["file"]))
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    raise ValueError("expected a string, {env: NAME} or {file: PATH}")


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]


def _one_or_two(raw: Any) -> Any:
    return raw if isinstance(raw, list) else [raw]


# A secret that may be two during a rotation (current first, then the next or the last): the
# first signs, either is accepted.
Rotating = Annotated[list[Secret], BeforeValidator(_one_or_two), Field(min_length=1, max_length=2)]


def values(secrets: Sequence[SecretStr]) -> tuple[str, ...]:
    return tuple(s.get_secret_value() for s in secrets)


class Tokens:
    """Bearer tokens a reload may replace while requests are checked against them: the first
    is presented, any is accepted."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.replace(tokens)

    def replace(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._tokens = tuple(tokens)  # one assignment: a reader sees the old or the new

    @property
    def first(self) -> str:
        return self._tokens[0]

    def matches(self, token: str) -> bool:
        # Every token compared (either may be the one in use during a rotation).
        found = [hmac.compare_digest(token.encode(), t.encode()) for t in self._tokens]
        return any(found)

    def __len__(self) -> int:
        return len(self._tokens)
