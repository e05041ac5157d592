"""`notifications`: notices by e-mail and chat."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    Field,
    PositiveFloat,
    model_validator,
)

from gpuacct.config.base import AccountName, Section
from gpuacct.secrets import Secret


class NoticeChannel(Section):
    """Where notices go: an Apprise URL (mailto://, json://, slack://, feishu://, wecombot://,
    dingtalk://, ...) in which {user} and {address} are replaced for each user."""

    url: Secret  # may hold a password: mailto://user:pass@smtp.example.org
    address: str | None = None  # the user's {address} unless they set one: "{user}@example.org"


class NotificationSettings(Section):
    """Notices to users by e-mail and chat, sent by gpuacct-enforcer through Apprise."""

    channels: dict[AccountName, NoticeChannel] = {}
    default_channels: list[str] | None = None  # a user's channels unless they choose; none: all
    per_user_per_hour: Annotated[int, Field(ge=1)] = 20  # more wait for the next hour
    retry_max_seconds: PositiveFloat = 600.0  # failures retried with backoff up to this
    check_interval_seconds: PositiveFloat = 2.0

    @model_validator(mode="after")
    def _known_channels(self) -> NotificationSettings:
        unknown = set(self.default_channels or ()) - set(self.channels)
        if unknown:
            raise ValueError(f"default_channels names no channel: {', '.join(sorted(unknown))}")
        return self
