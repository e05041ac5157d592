"""Only the enforcer, with the shared key, can change what a node enforces."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from gpuacct.policy import NodePolicy, UserPolicy
from gpuacct.signing import NONCE, SIGNATURE, TIMESTAMP, SignatureError, Verifier, sign
from tests.fixtures.enforcement import KEY, Cluster, EnforcingNode
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
PATH = "/v1/policy"


def put(node: EnforcingNode, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{node.exporter.port}{PATH}", data=body,
                                     method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def policy_version(node: EnforcingNode) -> float:
    line = next(line for line in node.exporter.scrape().splitlines()
                if line.startswith("gpuacct_node_policy_version "))
    return float(line.split()[1])


def test_unsigned_tampered_wrong_key_stale_and_replayed_requests_get_401_and_do_nothing(
        cluster: Cluster, test_users: dict[str, UnixUser]) -> None:
    alice = test_users["alice"].name
    node = cluster.node("n1")
    body = NodePolicy(version=5, users={alice: UserPolicy(block=True)}).model_dump_json().encode()
    key = KEY.encode()
    signed = sign(key, "PUT", PATH, body)
    tampered_body = body.replace(b'"block":true', b'"kill":true ')
    cases = {
        "unsigned": (body, {}),
        "tampered": (tampered_body, signed),
        "wrong key": (body, sign(b"not-the-key", "PUT", PATH, body)),
        "stale": (body, sign(key, "PUT", PATH, body, now=time.time() - 300)),
        "from the future": (body, sign(key, "PUT", PATH, body, now=time.time() + 300)),
        "other path": (body, sign(key, "PUT", "/v1/other", body)),
        "garbled": (body, {**signed, TIMESTAMP: "soon"}),
    }
    for case, (data, headers) in cases.items():
        status, answer = put(node, data, headers)
        assert status == 401, (case, answer)
        assert "refused" in json.loads(answer)["error"], case
    assert policy_version(node) == 0
    assert node.hook(alice) is None

    status, _ = put(node, body, signed)  # the genuine one
    assert status == 200
    assert node.hook(alice) is not None
    status, answer = put(node, body, signed)  # the same request again
    assert status == 401 and "replayed" in answer
    assert policy_version(node) == 5


def test_the_verifier_names_each_problem() -> None:
    key, body = b"k", b"{}"
    verifier = Verifier(key, max_skew_seconds=30)
    good = sign(key, "PUT", PATH, body, now=1000.0)
    verifier.verify("PUT", PATH, good, body, now=1010.0)
    problems = {
        "unsigned": ({}, body, 1010.0),
        "bad signature": (good, b"{ }", 1010.0),
        "stale": (sign(key, "PUT", PATH, body, now=1000.0), body, 1031.0),
        "replayed": (good, body, 1010.0),
        "not a number": ({**good, TIMESTAMP: "x"}, body, 1010.0),
    }
    for expected, (headers, data, now) in problems.items():
        with pytest.raises(SignatureError, match=expected):
            verifier.verify("PUT", PATH, headers, data, now=now)
    lower = {k.lower(): v for k, v in sign(key, "PUT", PATH, body, now=1000.0).items()}
    verifier.verify("PUT", PATH, lower, body, now=1000.0)  # header names in any case
    assert {NONCE, SIGNATURE, TIMESTAMP} == set(good)
