"""One-time login links: the contract between the node daemon, the control plane and the web.

`gpuacct web` asks the node daemon over its Unix socket (`{"op": "login"}`); the daemon names
the caller by the uid the kernel gives (SO_PEERCRED) and forwards the ask, signed, to
`LOGIN_PATH` on the control plane, which answers with a link holding a fresh random token bound
to that user. The web page redeems the token once at `REDEEM_PATH` (bearer token) and gives
the browser a session for that user only.
"""

from __future__ import annotations

from pydantic import Field

from gpuacct.policy import Model, UserName

LOGIN_PATH = "/v1/login"
REDEEM_PATH = "/v1/login/redeem"
LINK_PATH = "/login/link/"  # on the web page, followed by the token


class Redeem(Model):
    token: str = Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")


class Redeemed(Model):
    user: UserName
    node: str
