"""What the ledger does not know: burn rates and nodes from Prometheus, what is enforced from
the enforcer. Each answer is kept a few seconds, so a busy overview asks once, not per request;
a part that cannot be reached is shown as unknown, with why, never as an error page."""

from __future__ import annotations

import json
import math
import ssl
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from gpuacct import http
from gpuacct.allocation import (
    ALLOCATION_PATH,
    CANCEL_PATH,
    GPUS_PATH,
    RELEASE_PATH,
    Cancel,
    Gpus,
    ReleaseFor,
    Summary,
)
from gpuacct.config import Settings
from gpuacct.policy import NodePolicy, UserPolicy
from gpuacct.promql import Prometheus, PrometheusUnavailable
from web.cache import Memo

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Burn:
    per_hour: Decimal
    seconds_left: float | None  # None: not spending, or no estimate yet


class GpuRow(BaseModel, frozen=True):
    gpu: str
    model: str
    utilization: float | None
    users: dict[str, int]  # user -> GPU memory bytes held


class NodeRow(BaseModel, frozen=True):
    instance: str
    up: bool
    gpus: list[GpuRow] = []
    name: str | None = None  # as reservations name the node (gpuacct_node_info)


class EnforcerRefused(Exception):
    """The enforcer refused a change (a release, a cancel, a link, a notice setting), or could
    not be asked; str() says why. `status`: its HTTP status, None when it was not reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status



@dataclass(frozen=True)
class Answer(Generic[T]):
    value: T
    problem: str | None = None  # why the value is empty, when it is


class Live:
    def __init__(self, settings: Settings, ttl_seconds: float = 15.0,
                 tls: ssl.SSLContext | None = None) -> None:
        web = settings.web
        self.tls = tls  # verifies https:// Prometheus and enforcer
        self.prometheus = Prometheus(web.prometheus_url, TIMEOUT_SECONDS, tls)
        self.exporter_job = settings.enforcer.exporter_job
        self.enforcer_url = web.enforcer_url
        token = settings.auth.webhook_token
        self.token = token[0].get_secret_value() if token else None
        self.ttl = ttl_seconds
        self._memo = Memo.ttl(ttl_seconds)

    def _cached(self, name: str, fetch: Callable[[], Answer[T]]) -> Answer[T]:
        return self._memo.get(name, fetch)

    def _query(self, query: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, float(s.value)) for s in self.prometheus.instant(query, time.time())]

    # -- burn rate and time left (the recording rules)
    def burn(self) -> Answer[dict[str, Burn]]:
        return self._cached("burn", self._fetch_burn)

    def _fetch_burn(self) -> Answer[dict[str, Burn]]:
        try:
            rates = self._query("max by (user) (user:gpuacct_cost_per_hour:rate1h)")
            left = dict((labels.get("user", ""), v) for labels, v in self._query(
                "min by (user) (user:gpuacct_seconds_until_exhausted:rate1h)"))
        except PrometheusUnavailable as exc:
            return Answer({}, f"burn rates unknown: {exc}")
        burns = {}
        for labels, rate in rates:
            user = labels.get("user", "")
            seconds = left.get(user)
            if math.isfinite(rate):
                burns[user] = Burn(Decimal(str(rate)).quantize(Decimal("0.01")),
                                   seconds if seconds is not None and math.isfinite(seconds)
                                   else None)
        return Answer(burns)

    # -- what the enforcer wants done, per user
    def enforcement(self) -> Answer[dict[str, UserPolicy]]:
        return self._cached("enforcement", self._fetch_enforcement)

    def _fetch_enforcement(self) -> Answer[dict[str, UserPolicy]]:
        answer = self._ask_enforcer("enforcement", "/v1/policy", NodePolicy)
        return Answer(dict(answer.value.users) if answer.value else {}, answer.problem)

    def _ask_enforcer(self, what: str, path: str, model: type[M]) -> Answer[M | None]:
        if not self.enforcer_url:
            return Answer(None, f"{what} unknown: web.enforcer_url is not set")
        if not self.token:
            return Answer(None, f"{what} unknown: auth.webhook_token is not set (the "
                                "enforcer answers only with it)")
        url = self.enforcer_url.rstrip("/") + path
        try:
            return Answer(model.model_validate_json(http.get(
                url, TIMEOUT_SECONDS, {"Authorization": f"Bearer {self.token}"}, self.tls)))
        except http.HttpError as exc:
            return Answer(None, f"{what} unknown: {url}: {exc}")
        except ValidationError as exc:
            return Answer(None, f"{what} unknown: {url} answered something else: "
                                f"{exc.errors()[0]['msg']}")

    # -- reservations and the queue, from the enforcer's allocator
    def reservations(self) -> Answer[Summary | None]:
        return self._cached("reservations", lambda: self._ask_enforcer(
            "reservations", ALLOCATION_PATH, Summary))

    def gpus(self, user: str | None) -> Answer[Gpus | None]:
        """Every GPU as `user` may see it (None: an administrator)."""
        query = f"?{urllib.parse.urlencode({'user': user})}" if user is not None else ""
        return self._cached(f"gpus {user}", lambda: self._ask_enforcer(
            "GPUs", GPUS_PATH + query, Gpus))

    def release(self, user: str, id: int, actor: str) -> str:
        return self._change(RELEASE_PATH, ReleaseFor(user=user, id=id, actor=actor))

    def cancel(self, id: int, admin: str, reason: str = "") -> str:
        return self._change(CANCEL_PATH, Cancel(id=id, admin=admin, reason=reason))

    def _change(self, path: str, body: BaseModel) -> str:
        try:
            text: str = self.call("POST", path, body)["text"]
        finally:
            self._memo.forget("reservations")
        return text

    def call(self, method: str, path: str, body: BaseModel | None = None) -> Any:
        """One request to the enforcer with the bearer token; its JSON answer."""
        if not self.enforcer_url or not self.token:
            raise EnforcerRefused("web.enforcer_url and auth.webhook_token are needed")
        url = self.enforcer_url.rstrip("/") + path
        try:
            answer = http.request(method, url, TIMEOUT_SECONDS,
                                  body.model_dump_json().encode() if body else None,
                                  {"Authorization": f"Bearer {self.token}",
                                   "Content-Type": "application/json"}, self.tls)
        except http.HttpError as exc:
            raise EnforcerRefused(http.detail(exc.reason) if exc.status else
                                  f"the enforcer cannot be reached: {exc}", exc.status) from None
        return json.loads(answer.body)

    # -- a user's notice settings, kept by the enforcer's notifier
    def notice_choice(self, user: str) -> Answer[dict[str, Any] | None] | None:
        """None where no enforcer is configured (no notices either)."""
        if not self.enforcer_url:
            return None
        try:
            return Answer(self.call("GET", f"/v1/notices/settings/{user}"))
        except EnforcerRefused as exc:
            return Answer(None, f"notice settings unknown: {exc}")

    # -- nodes: up, their GPUs, who is on them
    def nodes(self) -> Answer[list[NodeRow]]:
        return self._cached("nodes", self._fetch_nodes)

    def _fetch_nodes(self) -> Answer[list[NodeRow]]:
        try:
            up = self._query(f'up{{job="{self.exporter_job}"}}')
            # Not by job: with honor_labels, a process's gpuacct job is its `job` label.
            info = self._query("gpuacct_gpu_info")
            util = self._query("gpuacct_gpu_utilization_ratio")
            held = self._query("sum by (instance, gpu, user) (gpuacct_gpu_process_memory_bytes)")
            names = {l["instance"]: l["node"] for l, _ in self._query(  # noqa: E741
                "gpuacct_node_info") if "node" in l}
        except PrometheusUnavailable as exc:
            return Answer([], f"nodes unknown: {exc}")
        utilization = {(l["instance"], l.get("gpu", "")): v for l, v in util}  # noqa: E741
        users: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for labels, value in held:
            users[(labels["instance"], labels.get("gpu", ""))][labels.get("user", "?")] = int(value)
        gpus: dict[str, list[GpuRow]] = defaultdict(list)
        for labels, _ in sorted(info, key=lambda s: (s[0]["instance"], s[0].get("gpu", ""))):
            key = (labels["instance"], labels.get("gpu", ""))
            gpus[key[0]].append(GpuRow(gpu=key[1], model=labels.get("gpu_model", ""),
                                       utilization=utilization.get(key),
                                       users=dict(sorted(users[key].items()))))
        return Answer([NodeRow(instance=labels["instance"], up=value == 1,
                               gpus=gpus[labels["instance"]], name=names.get(labels["instance"]))
                       for labels, value in sorted(up, key=lambda s: s[0]["instance"])])

