"""`web`: the web page, its administrators and how users log in."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    PositiveFloat,
    model_validator,
)

from gpuacct.config.base import AccountName, ListenAddress, Section
from gpuacct.secrets import PasswordHash, Rotating


class WebAdministrator(Section):
    """A named administrator of the web page: admin (everything), finance (recharge, adjust,
    prices, statements, the audit) or manager of group accounts (sees their members, sets the
    members' monthly limits; no money)."""

    password_hash: PasswordHash  # from `gpuacct-web hash-password`
    role: Literal["admin", "finance", "manager"]
    accounts: list[str] = []  # a manager's accounts

    @model_validator(mode="after")
    def _accounts_for_managers(self) -> WebAdministrator:
        if self.role == "manager" and not self.accounts:
            raise ValueError("a manager needs the accounts they manage (accounts: [...])")
        if self.role != "manager" and self.accounts:
            raise ValueError(f"only a manager has accounts; an {self.role} sees every one")
        return self


class LdapSettings(Section):
    """Logins checked by binding to the site's directory as the user (ldap3)."""

    url: str  # ldap://host:389 or ldaps://host:636
    user_dn: str = "uid={user},ou=people,dc=example,dc=org"  # the DN a user binds as
    start_tls: bool = False
    timeout_seconds: PositiveFloat = 5.0
    mail_attribute: str = "mail"  # the user's address for notices, read at login
    groups_base: str | None = None  # where the groups of `roles` are
    # A member (memberUid or member) of one of these groups logs in with its role.
    roles: dict[str, Literal["admin", "finance"]] = {}

    @model_validator(mode="after")
    def _user_in_dn(self) -> LdapSettings:
        if "{user}" not in self.user_dn:
            raise ValueError("user_dn must contain {user}, e.g. uid={user},ou=people,dc=...")
        if not re.match(r"^ldaps?://", self.url):
            raise ValueError("url must start with ldap:// or ldaps://")
        if self.roles and not self.groups_base:
            raise ValueError("roles need groups_base, where the groups are")
        return self


class PamSettings(Section):
    """Logins checked by PAM with the control host's own accounts (python-pam)."""

    service: str = "login"


class WebAuthSettings(Section):
    """How users log in to the web page themselves (administrators: web.administrators)."""

    ldap: LdapSettings | None = None
    pam: PamSettings | None = None
    # `gpuacct web` on a node prints a one-time link, valid this long.
    link_seconds: Annotated[float, Field(gt=0, le=86400)] = 600.0


class WebSettings(Section):
    """gpuacct-web: reads the billing ledger (billing.ledger), posts recharges into it."""

    listen_address: ListenAddress = "0.0.0.0:9838"
    prometheus_url: str = "http://127.0.0.1:19090"  # burn rates
    enforcer_url: str | None = None  # what is enforced and why (with auth.webhook_token)
    # Signs session cookies; two during a rotation (the first signs, either is accepted);
    # none: a new one at every start.
    session_secret: Rotating | None = None
    # The page's address as users reach it: the one-time links and the notices point there.
    public_url: str | None = None
    # A reverse proxy that authenticates users may name them in `user_header`; the header is
    # believed only from these addresses, and from none unless set.
    trusted_proxies: list[str] = []
    user_header: str = "X-Remote-User"
    page_size: Annotated[int, Field(ge=1, le=1000)] = 50
    login_failures_per_minute: Annotated[int, Field(ge=1)] = 5
    # A request body over this (a form, a JSON request) is refused (413) before it is read.
    max_body_bytes: Annotated[int, Field(ge=65536)] = 2**20
    # Named administrators with roles, by login name; auth.admin_password_hash is the one
    # called "admin", with the admin role.
    administrators: dict[AccountName, WebAdministrator] = {}
    auth: WebAuthSettings = WebAuthSettings()
