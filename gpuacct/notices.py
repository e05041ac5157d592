"""Notices to users: the contract between the web page and the enforcer's notifier."""

from __future__ import annotations

from pydantic import Field

from gpuacct.policy import Model, UserName

NOTICES_PATH = "/v1/notices"
ADDRESS = r"^[^\s<>\"',;]+$"  # one address (e-mail or a chat id), nothing a URL could split


class NoticeChoice(Model):
    """A user's own address and channels; None: the configured defaults."""

    address: str | None = Field(default=None, max_length=254, pattern=ADDRESS)
    channels: list[str] | None = Field(default=None, max_length=32)


class LearnedAddress(Model):
    """An address from the directory (LDAP `mail`), kept unless the user set their own."""

    address: str = Field(min_length=3, max_length=254, pattern=ADDRESS)


class ToldEvent(Model):
    """An event another part reports (a recharge), told once per `event` key."""

    event: str = Field(min_length=1, max_length=200)
    user: UserName
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=4000)
