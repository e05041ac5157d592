"""The control plane's routes about people rather than policy: one-time login links
(gpuacct.login), notices (enforcer.notices) and users' balances for their nodes.

- `POST /v1/login`: a node's signed forward of a user's `gpuacct web`; the answer, signed,
  holds the link. 400 names why none is given (root, a system user, no web.public_url).
- `POST /v1/balance`: a node's signed forward of a user's `gpuacct balance`; the answer,
  signed, holds the balance as the control plane's Prometheus has it (gpuacct.balance).
- `POST /v1/login/redeem`: the web page trades a link's token for the user it was given to,
  once (bearer token); 410 for a used, expired or unknown one.
- `POST /v1/notices`: an event another part reports (the web's recharges), queued once per key.
- `GET|PUT /v1/notices/settings/{user}`: a user's address and channels (the web page has
  authenticated the user); `GET /v1/notices`: what was sent or is waiting.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from enforcer.deps import AUTHORIZED, Ctl, Keys, Links, Outbox
from enforcer.logins import LinkRefused
from enforcer.notices import Notices
from enforcer.signed import signed_answer, signed_body
from gpuacct.allocation import BALANCE_PATH, Answer, Balance, Forwarded, Login
from gpuacct.balance import gather
from gpuacct.login import LOGIN_PATH, REDEEM_PATH, Redeem, Redeemed
from gpuacct.notices import NOTICES_PATH, LearnedAddress, NoticeChoice, ToldEvent
from gpuacct.policy import UserName
from gpuacct.wording import duration

logins = APIRouter(include_in_schema=False)  # the signed route: its own authentication
balances = APIRouter(include_in_schema=False)  # signed too
redeeming = APIRouter(dependencies=AUTHORIZED, include_in_schema=False)
notices = APIRouter(dependencies=AUTHORIZED)


@logins.post(LOGIN_PATH)
async def login(request: Request, links: Links, keys: Keys) -> Response:
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
    answer = Answer(text=text).model_dump_json(exclude_defaults=True)
    return signed_answer(keys, caller.node, LOGIN_PATH, answer.encode())


@balances.post(BALANCE_PATH)
async def balance(request: Request, ctl: Ctl, keys: Keys) -> Response:
    """A user's balance for their node, which vouches for who asks: read from Prometheus here,
    where the node may not reach it."""
    asked = await signed_body(request, keys, BALANCE_PATH, Forwarded, "request",
                              lambda f: f.caller.node)
    if not isinstance(asked.ask, Balance) or ctl.prometheus is None:
        raise HTTPException(400, f"bad request: {BALANCE_PATH} takes a balance")
    status = await run_in_threadpool(gather, asked.caller.user, ctl.prometheus, None)
    answer = Answer(text="", balance=status).model_dump_json(exclude_defaults=True)
    return signed_answer(keys, asked.caller.node, BALANCE_PATH, answer.encode())


@redeeming.post(REDEEM_PATH)
def redeem(links: Links, body: Redeem) -> Redeemed:
    try:
        return links.redeem(body.token)
    except LinkRefused as exc:
        raise HTTPException(410, str(exc)) from None


def _shown(store: Notices, user: str) -> dict[str, Any]:
    choice = store.choice(user)
    return {"user": user, "address": choice.address, "channels": choice.channels,
            "available": list(store.settings.channels)}


@notices.post(NOTICES_PATH)
def told(outbox: Outbox, body: ToldEvent) -> dict[str, bool]:
    store, notifier = outbox
    queued = store.told(body.event, body.user, body.subject, body.body)
    notifier.wake()
    return {"queued": queued}


@notices.get(NOTICES_PATH)
def history(outbox: Outbox, user: str | None = None, limit: int = 100) -> list[dict[str, object]]:
    return outbox[0].history(user, max(1, min(limit, 10_000)))


@notices.get("/v1/notices/settings/{user}")
def settings(outbox: Outbox, user: UserName) -> dict[str, Any]:
    return _shown(outbox[0], user)


@notices.post("/v1/notices/settings/{user}/learned")
def learned(outbox: Outbox, user: UserName, body: LearnedAddress) -> dict[str, Any]:
    outbox[0].learn_address(user, body.address)
    return _shown(outbox[0], user)


@notices.put("/v1/notices/settings/{user}")
def choose(outbox: Outbox, user: UserName, body: NoticeChoice) -> dict[str, Any]:
    try:
        outbox[0].choose(user, body.address, body.channels)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return _shown(outbox[0], user)
