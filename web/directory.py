"""Users' own logins against the site's directory (LDAP, by binding as the user) or the control
host's accounts (PAM). gpuacct keeps no user password; each check asks the directory afresh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import ldap3
import pam
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from gpuacct.config import LdapSettings, WebAuthSettings
from gpuacct.policy import USER_NAME
from web.auth import Role


class DirectoryUnreachable(Exception):
    """The directory could not be asked; str() names it (never the password)."""


@dataclass(frozen=True)
class DirectoryLogin:
    user: str
    via: str  # "ldap" or "pam"
    role: Role | None = None  # granted by a directory group
    mail: str | None = None


def check(settings: WebAuthSettings, user: str, password: str) -> DirectoryLogin | None:
    """The user, if the directory (then PAM) takes this password; None if neither does."""
    if not USER_NAME.match(user) or not password:  # an empty password is an anonymous bind
        return None
    if settings.ldap is not None:
        found = _ldap(settings.ldap, user, password)
        if found is not None:
            return found
    if settings.pam is not None and pam.pam().authenticate(user, password,
                                                           service=settings.pam.service):
        return DirectoryLogin(user, "pam")
    return None


def _ldap(settings: LdapSettings, user: str, password: str) -> DirectoryLogin | None:
    timeout = max(1, math.ceil(settings.timeout_seconds))  # ldap3 sets whole seconds
    server = ldap3.Server(settings.url, connect_timeout=timeout)
    dn = settings.user_dn.replace("{user}", escape_rdn(user))
    conn = ldap3.Connection(server, user=dn, password=password, receive_timeout=timeout)
    try:
        conn.open()
        if settings.start_tls:
            conn.start_tls()
        if not conn.bind():
            return None  # invalidCredentials, or no such user
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[settings.mail_attribute])
        mail = None
        if conn.entries and settings.mail_attribute in conn.entries[0]:
            values = conn.entries[0][settings.mail_attribute].values
            mail = str(values[0]) if values else None
        return DirectoryLogin(user, "ldap", _role(conn, settings, user, dn), mail)
    except LDAPException as exc:
        raise DirectoryUnreachable(f"the directory at {settings.url} cannot be reached "
                                   f"({type(exc).__name__})") from None
    finally:
        conn.unbind()


def _role(conn: ldap3.Connection, settings: LdapSettings, user: str, dn: str) -> Role | None:
    """The strongest role of the groups the user is in (admin before finance)."""
    member = f"(|(memberUid={escape_filter_chars(user)})(member={escape_filter_chars(dn)}))"
    granted = set()
    for group, role in settings.roles.items():
        if conn.search(settings.groups_base, f"(&(cn={escape_filter_chars(group)}){member})",
                       ldap3.SUBTREE, attributes=["cn"]) and conn.entries:
            granted.add(role)
    return "admin" if "admin" in granted else "finance" if "finance" in granted else None
