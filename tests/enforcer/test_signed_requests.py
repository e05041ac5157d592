"""Only the enforcer can change what a node enforces, and each node's key is its own: a node's
key signs nothing for another node, and a request for one node is worthless at another."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from gpuacct.policy import NodePolicy, SyncRequest, UserPolicy
from gpuacct.signing import (
    NODE,
    NONCE,
    SIGNATURE,
    TIMESTAMP,
    MasterKeys,
    NodeIdentity,
    SignatureError,
    node_key,
    sign,
)
from tests.fixtures.enforcement import (
    MASTER,
    Cluster,
    EnforcingNode,
    alert,
    key_of,
    notification,
    wait_until,
)
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
PATH = "/v1/policy"


def send(url: str, method: str, body: bytes | None,
         headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def put(node: EnforcingNode, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    return send(f"http://127.0.0.1:{node.exporter.port}{PATH}", "PUT", body, headers)


def policy_version(node: EnforcingNode) -> float:
    line = next(line for line in node.exporter.scrape().splitlines()
                if line.startswith("gpuacct_node_policy_version "))
    return float(line.split()[1])


def test_unsigned_tampered_wrong_key_stale_and_replayed_requests_get_401_and_do_nothing(
        cluster: Cluster, test_users: dict[str, UnixUser]) -> None:
    alice = test_users["alice"].name
    node = cluster.node("n1")
    body = NodePolicy(version=5, users={alice: UserPolicy(block=True)}).model_dump_json().encode()
    key = key_of("n1")
    signed = sign(key, "n1", "PUT", PATH, body)
    tampered_body = body.replace(b'"block":true', b'"kill":true ')
    cases = {
        "unsigned": (body, {}),
        "tampered": (tampered_body, signed),
        "wrong key": (body, sign(b"not-the-key", "n1", "PUT", PATH, body)),
        "the master key": (body, sign(MASTER.encode(), "n1", "PUT", PATH, body)),
        "another node's key": (body, sign(key_of("n2"), "n1", "PUT", PATH, body)),
        "for another node": (body, sign(key_of("n2"), "n2", "PUT", PATH, body)),
        "renamed": (body, {**signed, NODE: "n2"}),
        "stale": (body, sign(key, "n1", "PUT", PATH, body, now=time.time() - 300)),
        "from the future": (body, sign(key, "n1", "PUT", PATH, body, now=time.time() + 300)),
        "other path": (body, sign(key, "n1", "PUT", "/v1/other", body)),
        "garbled": (body, {**signed, TIMESTAMP: "soon"}),
    }
    for case, (data, headers) in cases.items():
        status, answer = put(node, data, headers)
        assert status == 401, (case, answer)
        assert "refused" in json.loads(answer)["detail"], case
    assert policy_version(node) == 0
    assert node.hook(alice) is None

    status, _ = put(node, body, signed)  # the genuine one
    assert status == 200
    assert node.hook(alice) is not None
    status, answer = put(node, body, signed)  # the same request again
    assert status == 401 and "replayed" in answer
    assert policy_version(node) == 5


class Recorder:
    """A plain HTTP hop between the enforcer and a node that keeps what passes: as anyone on
    the network could."""

    def __init__(self, target: str) -> None:
        self.captured: list[tuple[str, str, dict[str, str], bytes]] = []
        recorder = self

        class Hop(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                recorder.captured.append((self.command, self.path, headers, body))
                upstream = http.client.HTTPConnection(target, timeout=10)
                upstream.request(self.command, self.path, body or None, {
                    k: v for k, v in headers.items() if k.lower() != "host"})
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():  # the node's signature too
                    if name.lower() not in ("content-length", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hop)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def recorder_for() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        r.server.shutdown()


def test_a_nodes_key_pushes_and_pulls_for_no_other_node_and_a_captured_push_is_worthless(
        cluster: Cluster, test_users: dict[str, UnixUser], recorder_for: list[Recorder]) -> None:
    alice = test_users["alice"].name
    a, b = cluster.node("gpu-a"), cluster.node("gpu-b")
    hop = Recorder(f"127.0.0.1:{a.exporter.port}")
    recorder_for.append(hop)
    enforcer = cluster.enforcer([a], urls=[hop.url])  # A is reached through the hop
    assert enforcer.post_alerts(notification(alert(alice, "block", "Block")))[0] == 200
    wait_until(lambda: (a.hook(alice) or {}).get("block"))
    # ... and A's answer, signed with A's key, was taken: A is reachable for the enforcer.
    reachable = f'gpuacct_enforcer_node_reachable{{node="{hop.url}"}} 1.0'
    wait_until(lambda: reachable in send(f"{enforcer.url}/metrics", "GET", None, {})[1])
    pushes = [c for c in hop.captured if c[0] == "PUT"]
    assert pushes, "the push to A went through the hop"
    _, path, headers, body = pushes[-1]
    assert (path, headers[NODE]) == (PATH, "gpu-a")

    # Replayed to B, at once (within the clock skew, with a nonce B never saw): refused.
    version_b = policy_version(b)
    status, answer = put(b, body, {k: v for k, v in headers.items()
                                   if k.lower() not in ("host", "content-length")})
    assert status == 401 and "signed for node 'gpu-a', not for 'gpu-b'" in answer, answer
    assert policy_version(b) == version_b and b.hook(alice) is None

    # A's key pushes nothing to B, however it names the node.
    policy = NodePolicy(version=99, users={alice: UserPolicy(kill=True)}).model_dump_json()
    for signed_as in ("gpu-a", "gpu-b"):
        status, _ = put(b, policy.encode(), sign(key_of("gpu-a"), signed_as, "PUT", PATH,
                                                  policy.encode()))
        assert status == 401, signed_as
    assert policy_version(b) == version_b

    # Nor does it pull, report or ask as B: not as B, nor as A speaking for B.
    sync = SyncRequest(node="gpu-b", version=0, actions=()).model_dump_json().encode()
    for signed_as in ("gpu-b", "gpu-a"):
        status, answer = send(f"{enforcer.url}/v1/sync", "POST", sync,
                              {"Content-Type": "application/json",
                               **sign(key_of("gpu-a"), signed_as, "POST", "/v1/sync", sync)})
        assert status == 401, (signed_as, answer)
    assert "signed by node 'gpu-a' for node 'gpu-b'" in answer
    ask = json.dumps({"caller": {"node": "gpu-b", "uid": 1000, "user": alice},
                      "ask": {"op": "queue"}, "gpus": None}).encode()
    status, answer = send(f"{enforcer.url}/v1/allocation", "POST", ask,
                          {"Content-Type": "application/json",
                           **sign(key_of("gpu-a"), "gpu-a", "POST", "/v1/allocation", ask)})
    assert status == 401 and "for node 'gpu-b'" in answer, answer
    # B's own key still pulls as B.
    status, answer = send(f"{enforcer.url}/v1/sync", "POST", sync,
                          {"Content-Type": "application/json",
                           **sign(key_of("gpu-b"), "gpu-b", "POST", "/v1/sync", sync)})
    assert status == 200, answer


def test_keys_are_derived_per_node_and_two_are_accepted_during_a_rotation() -> None:
    old, new = b"old-master", b"new-master"
    assert node_key(old, "n1") != node_key(old, "n2") != node_key(new, "n1")
    assert len(node_key(old, "n1")) == 64 and node_key(old, "n1") == node_key(old, "n1")
    body = b"{}"
    # The enforcer moves to the new master first, accepting both; the node follows.
    enforcer = MasterKeys([new, old], 30)
    node_before = NodeIdentity("n1", [node_key(old, "n1"), node_key(new, "n1")], 30)
    node_after = NodeIdentity("n1", [node_key(new, "n1")], 30)
    for node in (node_before, node_after):
        assert enforcer.verify("POST", "/v1/sync", node.sign("POST", "/v1/sync", body),
                               body) == "n1"
        node.verify("PUT", PATH, enforcer.sign("n1", "PUT", PATH, body), body)
    with pytest.raises(SignatureError, match="bad signature"):
        MasterKeys([new], 30).verify("POST", "/v1/sync", NodeIdentity(
            "n1", [node_key(old, "n1")], 30).sign("POST", "/v1/sync", body), body)


def test_the_verifier_names_each_problem() -> None:
    key, body = b"k", b"{}"
    node = NodeIdentity("n1", [key], 30)
    good = sign(key, "n1", "PUT", PATH, body, now=time.time())
    node.verify("PUT", PATH, good, body)
    problems = {
        "unsigned": ({}, body),
        "bad signature": (sign(key, "n1", "PUT", PATH, b"{ }"), body),
        "stale": (sign(key, "n1", "PUT", PATH, body, now=time.time() - 31), body),
        "replayed": (good, body),
        "not a number": ({**good, TIMESTAMP: "x"}, body),
        "signed for node 'n2', not for 'n1'": (sign(key, "n2", "PUT", PATH, body), body),
    }
    for expected, (headers, data) in problems.items():
        with pytest.raises(SignatureError, match=expected):
            node.verify("PUT", PATH, headers, data)
    lower = {k.lower(): v for k, v in sign(key, "n1", "PUT", PATH, body).items()}
    node.verify("PUT", PATH, lower, body)  # header names in any case
    assert {NONCE, NODE, SIGNATURE, TIMESTAMP} == set(good)


def test_node_key_prints_the_key_a_node_is_given(tmp_path: Path) -> None:
    config = tmp_path / "enforcer.yaml"

    def node_key_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "enforcer", "--config", str(config),
                               "node-key", *args], capture_output=True, text=True, timeout=60)
    new, old = "new-master-key-16", "old-master-key-16"
    config.write_text(yaml.safe_dump({"auth": {"node_master_key": [new, old]}}))
    printed = node_key_command("gpu07")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == node_key(b"new-master-key-16", "gpu07").decode() + "\n"
    assert node_key_command("gpu07", "--next").stdout.strip() == node_key(
        old.encode(), "gpu07").decode()
    assert "new-master-key-16" not in printed.stdout + printed.stderr

    config.write_text(yaml.safe_dump({"auth": {"node_master_key": "the-one-master-key"}}))
    refused = node_key_command("gpu07", "--next")
    assert (refused.returncode, refused.stderr.strip()) == (
        2, "gpuacct-enforcer: --next: auth.node_master_key has one key, not two")
    assert node_key_command(" gpu07").returncode == 2
    config.write_text("{}\n")
    missing = node_key_command("gpu07")
    assert missing.returncode == 2 and "auth.node_master_key must be set" in missing.stderr
    assert "Traceback" not in missing.stderr
