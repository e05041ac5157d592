"""Alertmanager's webhook payload (version 4), validated: what the enforcer accepts.

Every alert routed here must name its `user` and an `action`; a throttle also its
`cpu_quota_percent`. Anything else is a routing or rule mistake, refused with 4xx (which
Alertmanager does not retry) and a message naming the alert and the label.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpuacct.policy import ACTIONS, USER_NAME, AllowanceKind, Reason


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _enforceable(self) -> Alert:
        user, action = self.labels.get("user"), self.labels.get("action")
        if not user or not USER_NAME.match(user):
            raise ValueError(f"labels.user must be a user name, got {user!r}")
        if action not in ACTIONS:
            raise ValueError(f"labels.action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if action == "throttle":
            quota = self.labels.get("cpu_quota_percent", "")
            if not quota.isdigit() or not 1 <= int(quota) <= 100_000:
                raise ValueError("a throttle needs labels.cpu_quota_percent, a whole number "
                                 f"from 1, got {quota!r}")
        allowance = self.labels.get("allowance")
        if allowance is not None and allowance not in get_args(AllowanceKind):
            raise ValueError(f"labels.allowance must be one of "
                             f"{', '.join(get_args(AllowanceKind))}, got {allowance!r}")
        return self

    @property
    def user(self) -> str:
        return self.labels["user"]

    @property
    def notice(self) -> str:
        """The notice this alert is told to its user in (enforcer.notices)."""
        return self.labels.get("notice") or self.labels.get("alertname", "unnamed")

    def reason(self) -> Reason:
        quota = self.labels.get("cpu_quota_percent")
        return Reason(
            alert=self.labels.get("alertname", "unnamed"),
            action=self.labels["action"],  # checked above
            summary=self.annotations.get("summary", ""),
            description=self.annotations.get("description", ""),
            cpu_quota_percent=int(quota) if quota and self.labels["action"] == "throttle"
            else None,
            allowance=self.labels.get("allowance"))  # checked above


class Notification(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    alerts: list[Alert] = Field(max_length=10_000)
