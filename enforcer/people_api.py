"""The control plane's routes about people rather than policy: one-time login links
(gpuacct.login) and notices (enforcer.notices).

- `POST /v1/login`: a node's signed forward of a user's `gpuacct web`; the answer, signed,
  holds the link. 400 names why none is given (root, a system user, no web.public_url).
- `POST /v1/login/redeem`: the web page trades a link's token for the user it was given to,
  once (bearer token); 410 for a used, expired or unknown one.
- `POST /v1/notices`: an event another part reports (the web's recharges), queued once per key.
- `GET|PUT /v1/notices/settings/{user}`: a user's address and channels (the web page has
  authenticated the user); `GET /v1/notices`: what was sent or is waiting.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.params import Depends

from enforcer.logins import LinkRefused, LoginLinks
from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.signed import signed_answer, signed_body
from gpuacct.allocation import Answer, Forwarded, Login
from gpuacct.login import LOGIN_PATH, REDEEM_PATH, Redeem, Redeemed
from gpuacct.notices import NOTICES_PATH, LearnedAddress, NoticeChoice, ToldEvent
from gpuacct.policy import UserName
from gpuacct.signing import MasterKeys
from gpuacct.wording import duration


def add_login_routes(app: FastAPI, links: LoginLinks, keys: MasterKeys,
                     authorized: list[Depends]) -> None:
    @app.post(LOGIN_PATH, include_in_schema=False)
    async def login(request: Request) -> Response:
        asked = await signed_body(request, keys, LOGIN_PATH, Forwarded, "request",
                                  lambda f: f.caller.node)
        if not isinstance(asked.ask, Login):
            raise HTTPException(400, f"bad request: {LOGIN_PATH} takes a login")
        caller = asked.caller
        try:
            link = links.issue(caller.user, caller.uid, caller.node)
        except LinkRefused as exc:
            raise HTTPException(400, f"refused: {exc}") from None
        text = (f"Open this link in your browser within {duration(links.seconds)}; it logs you "
                f"in as {caller.user} once:\n{link}")
        return signed_answer(keys, caller.node, LOGIN_PATH,
                             Answer(text=text).model_dump_json().encode())

    @app.post(REDEEM_PATH, dependencies=authorized, include_in_schema=False)
    def redeem(body: Redeem) -> Redeemed:
        try:
            return links.redeem(body.token)
        except LinkRefused as exc:
            raise HTTPException(410, str(exc)) from None


def add_notice_routes(app: FastAPI, notices: Notices, notifier: Notifier,
                      authorized: list[Depends]) -> None:
    def shown(user: str) -> dict[str, Any]:
        choice = notices.choice(user)
        return {"user": user, "address": choice.address, "channels": choice.channels,
                "available": list(notices.settings.channels)}

    @app.post(NOTICES_PATH, dependencies=authorized)
    def told(body: ToldEvent) -> dict[str, bool]:
        queued = notices.told(body.event, body.user, body.subject, body.body)
        notifier.wake()
        return {"queued": queued}

    @app.get(NOTICES_PATH, dependencies=authorized)
    def history(user: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        return notices.history(user, max(1, min(limit, 10_000)))

    @app.get("/v1/notices/settings/{user}", dependencies=authorized)
    def settings(user: UserName) -> dict[str, Any]:
        return shown(user)

    @app.post("/v1/notices/settings/{user}/learned", dependencies=authorized)
    def learned(user: UserName, body: LearnedAddress) -> dict[str, Any]:
        notices.learn_address(user, body.address)
        return shown(user)

    @app.put("/v1/notices/settings/{user}", dependencies=authorized)
    def choose(user: UserName, body: NoticeChoice) -> dict[str, Any]:
        try:
            notices.choose(user, body.address, body.channels)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return shown(user)
