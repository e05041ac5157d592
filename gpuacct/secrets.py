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

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from pydantic_core import PydanticCustomError

from gpuacct.files import readable_by_others

# A key, token or session secret shorter than this is refused: 16 random characters are about
# 96 bits or more (`openssl rand -hex 32` gives 64).
MIN_KEY_LENGTH = 16
CONTAINER_SECRETS = Path("/run/secrets")
# The error type of a refused secret: its value is never shown (gpuacct.config.describe_error).
SECRET_ERROR = "secret"


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
            exposed = readable_by_others(path)
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
        # A secret every user can read is no secret. /run/secrets is where Docker and Compose
        # mount a container's own secrets: only that container sees them.
        if exposed and not path.is_relative_to(CONTAINER_SECRETS):
            raise ValueError(exposed)
        return value
    raise ValueError("expected a string, {env: NAME} or {file: PATH}")


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise PydanticCustomError(SECRET_ERROR, "empty: a secret must have a value")
    return value


def _long_enough(value: SecretStr) -> SecretStr:
    length = len(value.get_secret_value())
    if length < MIN_KEY_LENGTH:
        raise PydanticCustomError(
            SECRET_ERROR, "{length} characters: a key is at least {minimum} (make one with "
            "`openssl rand -hex 32`)", {"length": length, "minimum": MIN_KEY_LENGTH})
    return value


def _a_hash(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().startswith(("$argon2id$", "scrypt$")):
        raise PydanticCustomError(SECRET_ERROR, "not a password hash: make one with "
                                                "`gpuacct-web hash-password`")
    return value


# A password, a URL with credentials, a token of another system: any value but empty.
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret), AfterValidator(_not_empty)]
# A key or token gpuacct's own parts share: long enough not to be guessed.
Key = Annotated[SecretStr, BeforeValidator(resolve_secret), AfterValidator(_long_enough)]
# An administrator's password as `gpuacct-web hash-password` hashes it.
PasswordHash = Annotated[SecretStr, BeforeValidator(resolve_secret), AfterValidator(_a_hash)]


def _one_or_two(raw: Any) -> Any:
    return raw if isinstance(raw, list) else [raw]


# A secret that may be two during a rotation (current first, then the next or the last): the
# first signs, either is accepted.
Rotating = Annotated[list[Key], BeforeValidator(_one_or_two), Field(min_length=1, max_length=2)]


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
