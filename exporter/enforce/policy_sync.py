"""How the policy reaches the node: pushed by the enforcer to `PUT /v1/policy`, and pulled from
the enforcer's `/v1/sync` on start and every `pull_interval_seconds`. Both directions are
signed (gpuacct.signing); an unsigned or altered request is refused with 401 and does nothing.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from exporter.enforce.actuator import Actuator
from gpuacct.metrics_http import MAX_BODY, StartResponse
from gpuacct.policy import (
    POLICY_PATH,
    SYNC_PATH,
    NodeGpu,
    NodePolicy,
    PushResult,
    SyncRequest,
)
from gpuacct.signed_http import ExchangeError, exchange
from gpuacct.signing import NodeIdentity, SignatureError

log = logging.getLogger(__name__)


class NodeNameEndpoint:
    """WSGI app for `GET /v1/node`: the name this node signs with. Not secret: a node that
    gives another's name gets a push it cannot answer with that node's key."""

    def __init__(self, node: str) -> None:
        self.body = json.dumps({"node": node}).encode()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [self.body]


class PolicyEndpoint:
    """WSGI app for `PUT /v1/policy`."""

    def __init__(self, actuator: Actuator, identity: NodeIdentity) -> None:
        self.actuator, self.identity = actuator, identity

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def answer(status: str, message: str) -> list[bytes]:
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"detail": message}).encode()]

        if environ["REQUEST_METHOD"] != "PUT":
            return answer("405 Method Not Allowed", "use PUT with a signed policy")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return answer("400 Bad Request", "Content-Length is not a number")
        if length < 0:
            return answer("400 Bad Request", "Content-Length is negative")
        if length > MAX_BODY:
            return answer("413 Content Too Large", f"a policy is at most {MAX_BODY} bytes")
        body = environ["wsgi.input"].read(length)
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        try:
            self.identity.verify("PUT", POLICY_PATH, headers, body)
        except SignatureError as exc:
            log.warning("refused a policy push from %s: %s", environ.get("REMOTE_ADDR"), exc)
            return answer("401 Unauthorized", f"refused: {exc}")
        try:
            policy = NodePolicy.model_validate_json(body)
        except ValidationError as exc:
            return answer("400 Bad Request", f"not a policy: {exc.errors()[0]['msg']}")
        self.actuator.apply(policy)
        result = PushResult(node=self.actuator.node, version=self.actuator.state.version,
                            actions=tuple(self.actuator.take_reports()))
        data = result.model_dump_json().encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  *self.identity.sign("RESPONSE", POLICY_PATH, data).items()])
        return [data]


class Puller:
    """Pulls the policy (and delivers the reports) until stopped."""

    def __init__(self, actuator: Actuator, enforcer_url: str, identity: NodeIdentity,
                 interval: float, timeout: float = 10.0,
                 gpus: Callable[[], tuple[NodeGpu, ...] | None] = lambda: None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.actuator, self.url, self.identity = actuator, enforcer_url, identity
        self.interval, self.timeout, self.gpus, self.tls = interval, timeout, gpus, tls

    def sync(self) -> bool:
        reports = self.actuator.take_reports()
        request = SyncRequest(node=self.actuator.node,
                              version=max(self.actuator.state.version, 0), actions=tuple(reports),
                              gpus=self.gpus(),
                              reservation_use=dict(self.actuator.last_used),
                              release_idle=self.actuator.idle_releases(),
                              held=self.actuator.held())
        try:
            answer = exchange(self.url, "POST", SYNC_PATH, request.model_dump_json().encode(),
                              self.identity.sign, self.identity.verify, self.timeout, self.tls)
            policy = NodePolicy.model_validate_json(answer)
        except (ExchangeError, ValidationError) as exc:
            self.actuator.return_reports(reports)
            log.warning("cannot pull the policy from %s: %s", self.url, exc)
            return False
        if self.actuator.apply(policy):
            log.info("pulled policy %d", policy.version)
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.sync() and self.actuator.reports.queued:
                self.sync()  # what the pulled policy made us do, to the audit log now
            stop.wait(self.interval)

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self.run, args=(stop,), name="policy pull", daemon=True).start()
