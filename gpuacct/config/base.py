"""What every section is made of: the Section model, the shared value types (addresses,
ports, money, model patterns, store places) and how a validation error is told."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from gpuacct.patterns import check_pattern
from gpuacct.secrets import SECRET_ERROR


class ConfigError(Exception):
    """A config file that cannot be used; str() is one line per problem."""


def split_listen_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` to (host, port); an empty host means every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _check_listen_address(value: str) -> str:
    split_listen_address(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false: for a key whose choices include "off", it is."""
    return "off" if value is False else value


OFF = BeforeValidator(_yaml_off)


Port = Annotated[int, Field(gt=0, lt=65536)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Money = Annotated[Decimal, Field(allow_inf_nan=False)]


Price = Annotated[Decimal, Field(allow_inf_nan=False, ge=0)]


# A regular expression searched in a GPU model's name, any case, by RE2 (prices,
# reservations): gpuacct.patterns.
ModelPattern = Annotated[str, AfterValidator(check_pattern)]


AccountName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")]


def _check_postgres_url(value: str) -> str:
    if re.search(r"://[^/@]*:[^/@]*@", value):
        raise ValueError("the URL holds a password: give it in PGPASSWORD or a password file "
                         "(PGPASSFILE, ~/.pgpass), which libpq reads")
    return value


def _store_target(value: Any) -> Any:
    """A postgresql:// URL stays a string (and must hold no password); anything else is a
    file's path."""
    if isinstance(value, str) and re.match(r"^postgres(ql)?://", value):
        return _check_postgres_url(value)
    if isinstance(value, str):
        return Path(value)
    return value


# Where a store is: a SQLite file, or a PostgreSQL URL.
StoreTarget = Annotated[str | Path, BeforeValidator(_store_target)]


def _one_or_more_urls(value: Any) -> Any:
    urls = [value] if isinstance(value, str) else value
    if isinstance(urls, list) and not urls:
        raise ValueError("give at least one Prometheus URL")
    return urls


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _key_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("@"):  # union tags are not keys
            path += f".{part}" if path else part
    return path or "(top level)"


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `key.path: what is wrong` (config files and HTTP bodies alike)."""
    where = _key_path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"{where}: missing, a value is required"
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    msg = str(error["msg"]).removeprefix("Value error, ")
    # A whole section: the message says what; a secret: its value is never shown.
    if isinstance(error["input"], Mapping | list) or kind == SECRET_ERROR:
        return f"{where}: {msg}"
    shown = repr(error["input"])
    return f"{where}: {shown if len(shown) <= 80 else shown[:77] + '...'} is not valid: {msg}"
