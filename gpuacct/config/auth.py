"""`auth`: the shared secrets between the services and the nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    PositiveFloat,
    model_validator,
)

from gpuacct.config.base import Section
from gpuacct.secrets import PasswordHash, Rotating


class AuthSettings(Section):
    """Shared secrets; each is a literal, {env: NAME} or {file: PATH}."""

    # On a node: its own key (`gpuacct-enforcer node-key NAME` prints it). On the enforcer:
    # the master key every node's key is derived from. Each: one, or two during a rotation.
    node_key: Rotating | None = None
    node_master_key: Rotating | None = None
    # Alertmanager's bearer token to the enforcer, and the web's. Two during a rotation: the
    # web presents the first, the enforcer accepts either.
    webhook_token: Rotating | None = None
    admin_password_hash: PasswordHash | None = None
    max_clock_skew_seconds: PositiveFloat = 30.0  # signed node requests older than this fail

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "node_hmac_key" in raw:
            raise ValueError("node_hmac_key, one key shared by every node, was replaced by a "
                             "key per node: give the enforcer auth.node_master_key and each "
                             "node auth.node_key (gpuacct-enforcer node-key NAME prints it)")
        return raw
