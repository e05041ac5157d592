"""The allocator's HTTP API on the control plane.

- `POST /v1/allocation`: a user's ask, forwarded and signed by their node, which vouches for
  the caller's uid (read from its Unix socket); the answer is signed too. 400 names a bad or
  refused ask, 404 a request that is not the caller's, 401 an unsigned request.
- `POST /v1/allocation/cancel`: an administrator ends any request (bearer token).
- `POST /v1/allocation/preempt`: an administrator reserves for a user over running work
  (bearer token; audited, the work's owners told and stopped after the grace).
- `POST /v1/allocation/release`: the web page releases a user's own request for them (bearer
  token; the page has authenticated the user).
- `GET /v1/allocation`: every reservation and the queue, with positions and estimated starts
  (bearer token), for the web page and administrators; `GET /v1/allocation/audit` every step.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from allocator.service import AllocationError, Allocator, NotFound
from enforcer.deps import AUTHORIZED, Alloc, Keys
from enforcer.signed import signed_answer, signed_body
from gpuacct.allocation import (
    ALLOCATION_PATH,
    BALANCE_PATH,
    CANCEL_PATH,
    GPUS_PATH,
    PREEMPT_PATH,
    RELEASE_PATH,
    Answer,
    Balance,
    Cancel,
    Forwarded,
    Gpus,
    Hold,
    Login,
    Preempt,
    Release,
    ReleaseFor,
    Reserve,
    Summary,
)
from gpuacct.login import LOGIN_PATH

log = logging.getLogger(__name__)


def answer_for(allocator: Allocator, forwarded: Forwarded) -> Answer:
    caller, ask = forwarded.caller, forwarded.ask
    if forwarded.gpus is not None:
        allocator.report_gpus(caller.node, forwarded.gpus)
    if isinstance(ask, Reserve):
        outcome = allocator.reserve(caller.user, caller.node, ask)
        return Answer(text=outcome.text, id=outcome.request.id if outcome.request else None)
    if isinstance(ask, Release):
        return Answer(text="\n".join(o.text for o in allocator.release(caller.user, ask.id)))
    if isinstance(ask, Login):
        raise AllocationError(f"a login is asked at {LOGIN_PATH}, not here")
    if isinstance(ask, Balance):
        raise AllocationError(f"a balance is asked at {BALANCE_PATH}, not here")
    if isinstance(ask, Hold):
        raise AllocationError("a hold is kept by the node's daemon, not here")
    if ask.op == "gpus":
        return Answer(text="", gpus=allocator.gpus(caller.user))
    mine = caller.user if ask.op == "reservations" else None
    return Answer(text="", summary=allocator.summary(mine))


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    """A request that is not there, or not the caller's: 404 from any allocation route."""
    return JSONResponse({"detail": str(exc)}, status_code=404)


router = APIRouter(include_in_schema=False)  # the signed route: its own authentication
authorized = APIRouter(dependencies=AUTHORIZED)


@router.post(ALLOCATION_PATH)
async def forwarded(request: Request, allocator: Alloc, keys: Keys) -> Response:
    ask = await signed_body(request, keys, ALLOCATION_PATH, Forwarded, "request",
                            lambda f: f.caller.node)
    try:  # in a worker thread: the event loop keeps answering while the allocator works
        answer = await run_in_threadpool(answer_for, allocator, ask)
    except NotFound:
        raise  # 404 (not_found)
    except AllocationError as exc:
        raise HTTPException(400, f"refused: {exc}") from None
    return signed_answer(keys, ask.caller.node, ALLOCATION_PATH,
                         answer.model_dump_json(exclude_defaults=True).encode())


@authorized.post(CANCEL_PATH)
def cancel(allocator: Alloc, body: Cancel) -> dict[str, Any]:
    outcome = allocator.cancel(body.id, body.admin, body.reason)
    log.info("%s by %s", outcome.text, body.admin)
    return {"text": outcome.text}


@authorized.post(PREEMPT_PATH)
def preempt(allocator: Alloc, body: Preempt) -> dict[str, Any]:
    assert body.ask.node is not None  # Preempt's validator
    try:
        outcome = allocator.reserve(body.user, body.ask.node, body.ask, body.admin,
                                    body.reason)
    except AllocationError as exc:
        raise HTTPException(400, f"refused: {exc}") from None
    log.info("preemption for %s by %s: %s", body.user, body.admin, outcome.text)
    return {"text": outcome.text}


@authorized.post(RELEASE_PATH)
def release_for(allocator: Alloc, body: ReleaseFor) -> dict[str, Any]:
    outcomes = allocator.release(body.user, body.id, body.actor)
    return {"text": "\n".join(o.text for o in outcomes)}


@authorized.get(ALLOCATION_PATH)
def summary(allocator: Alloc, user: str | None = None) -> Summary:
    return allocator.summary(user)


@authorized.get(GPUS_PATH)
def gpus(allocator: Alloc, user: str | None = None) -> Gpus:
    """Every GPU, as `user` may see it (none: an administrator, every name)."""
    return Gpus(now=allocator.clock(), gpus=allocator.gpus(user))


@authorized.get(f"{ALLOCATION_PATH}/audit")
def audit(allocator: Alloc, user: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    return [vars(e) for e in allocator.store.audit(user, max(1, min(limit, 100_000)))]
