"""`influxdb`: where usage lines are written, InfluxDB 1.x or 2.x."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Tag,
)

from gpuacct.config.base import Section
from gpuacct.secrets import Secret


class InfluxV1Settings(Section):
    version: Literal[1] = 1
    url: str = "http://127.0.0.1:18086"
    database: str = "gpuacct"
    username: str | None = None
    password: Secret | None = None


class InfluxV2Settings(Section):
    version: Literal[2]
    url: str
    org: str
    bucket: str
    token: Secret


def _influx_version(raw: Any) -> str:
    version = raw.get("version", 1) if isinstance(raw, Mapping) else getattr(raw, "version", 1)
    return "@v2" if version == 2 else "@v1"


InfluxSettings = Annotated[
    Annotated[InfluxV1Settings, Tag("@v1")] | Annotated[InfluxV2Settings, Tag("@v2")],
    Discriminator(_influx_version),
]
