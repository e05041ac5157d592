"""The Jobs view: every job the nodes reported, with its framework, script, redacted arguments,
directory, node and state (running, finished, lost); as a page and as `GET /api/v1/jobs`,
filtered by user, node, state and time, a page at a time. A user sees their own jobs;
administrators and finance everyone's; a manager those of the users charged to their accounts.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from gpuacct.periods import iso, parse_time
from jobstore.store import STATES, JobFilter, JobRecord, State
from web.deps import MONEY, Ctx, Someone, may_see
from web.pages import render

router = APIRouter()
MAX_PER_PAGE = 500


class Job(BaseModel):
    node: str
    user: str
    job: str
    state: State
    name: str
    framework: str
    script: str
    args: str
    cwd: str
    source: str
    started: str | None
    first_seen: str
    last_seen: str
    ended: str | None
    lost_at: str | None


class Jobs(BaseModel):
    total: int
    page: int
    per_page: int
    items: list[Job]


def _job(record: JobRecord) -> Job:
    values = asdict(record)
    for key in ("started", "first_seen", "last_seen", "ended", "lost_at"):
        values[key] = iso(values[key]) if values[key] else None
    values["first_seen"] = values["first_seen"] or ""
    values["last_seen"] = values["last_seen"] or ""
    del values["id"]
    return Job(**values)


def _time(name: str, text: str | None) -> float | None:
    """`2026-12-04` or `2026-12-04T10:00:00Z` (UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


Text = Annotated[str | None, Query(max_length=256)]


def _find(ctx: Ctx, who: Someone, user: str | None, node: str | None, state: State | None,
          since: str | None, until: str | None, page: int,
          per_page: int) -> tuple[list[JobRecord], int, JobFilter]:
    if user is None and who.role not in MONEY:
        if who.user is None:
            raise HTTPException(403, f"{who.name} sees the jobs of their accounts' users: "
                                     "name one with ?user=")
        user = who.user  # a user's own jobs
    if user is not None:
        may_see(who, user, ctx)
    where = JobFilter(user=user or None, node=node or None, state=state,
                      since=_time("since", since), until=_time("until", until))
    store = ctx.jobs.store()
    if store is None:
        return [], 0, where
    items, total = store.jobs(where, page, per_page)
    return items, total, where


@router.get("/api/v1/jobs", tags=["jobs"])
def jobs_api(ctx: Ctx, who: Someone, user: Text = None, node: Text = None,
             state: State | None = None, since: Text = None, until: Text = None,
             page: Annotated[int, Query(ge=0, le=100_000)] = 0,
             per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50) -> Jobs:
    """The jobs that match, newest first. `since`: ran at some time at or after it; `until`:
    began at or before it."""
    items, total, _ = _find(ctx, who, user, node, state, since, until, page, per_page)
    return Jobs(total=total, page=page, per_page=per_page, items=[_job(j) for j in items])


@router.get("/jobs", include_in_schema=False)
def jobs_page(request: Request, ctx: Ctx, who: Someone, user: Text = None, node: Text = None,
              state: Annotated[str | None, Query(max_length=16)] = None, since: Text = None,
              until: Text = None, page: Annotated[int, Query(ge=0, le=100_000)] = 0
              ) -> HTMLResponse:
    if state and state not in STATES:
        raise HTTPException(400, f"state: {state!r} is none of {', '.join(STATES)}")
    per_page = ctx.settings.web.page_size
    items, total, where = _find(ctx, who, user, node, state or None,
                                since, until, page, per_page)
    query = {k: v for k, v in (("user", user), ("node", node), ("state", state),
                               ("since", since), ("until", until)) if v}
    def link(to: int) -> str:
        return "/jobs?" + urlencode({**query, "page": to})
    return render(request, "jobs.html", who=who, jobs=[_job(j) for j in items], total=total,
                  page=page, pages=(total + per_page - 1) // per_page, link=link,
                  filters=query, user=where.user, states=STATES,
                  kept=ctx.jobs.store() is not None)
