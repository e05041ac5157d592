"""A waiting run's hold at the node's user socket: the daemon makes the request and answers on
the connection it holds it by, so a run that dies at any moment, even before its answer came,
leaves no request behind."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from exporter.users.socket import Forwarder, UserSocketServer
from gpuacct.signing import NodeIdentity
from tests.fixtures.enforcement import wait_until

RESERVE = {"count": 1, "seconds": 3600}


class SlowControlPlane(Forwarder):
    """Answers a reservation with request 7 once `answer` is set; records releases."""

    def __init__(self) -> None:
        super().__init__(NodeIdentity("gpu01", [b"k" * 32], 60), "http://127.0.0.1:9", lambda: None)
        self.answer, self.released = threading.Event(), list[tuple[int, int]]()

    def forward(self, uid: int, ask: Any) -> dict[str, Any]:
        assert ask.op == "reserve", ask
        self.answer.wait(10)
        return {"answer": {"text": "queued: request 7, position 1", "id": 7}}

    def release(self, uid: int, id: int) -> None:
        self.released.append((uid, id))


def serve(tmp_path: Path) -> tuple[SlowControlPlane, Path, threading.Event]:
    plane, path, stop = SlowControlPlane(), tmp_path / "user.sock", threading.Event()
    UserSocketServer(path, plane).start(stop)
    return plane, path, stop


def hold(path: Path, request: dict[str, Any]) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.sendall(json.dumps({"op": "hold", **request}).encode() + b"\n")
    return client


def test_a_run_gone_before_its_answer_leaves_no_request(tmp_path: Path) -> None:
    plane, path, stop = serve(tmp_path)
    try:
        hold(path, {"reserve": RESERVE}).close()  # killed while its request is being made
        plane.answer.set()
        wait_until(lambda: plane.released == [(os.getuid(), 7)], 10)
    finally:
        stop.set()


def test_the_answer_comes_on_the_hold_and_its_end_ends_the_request(tmp_path: Path) -> None:
    plane, path, stop = serve(tmp_path)
    plane.answer.set()
    try:
        client = hold(path, {"reserve": RESERVE})
        reply = json.loads(client.makefile("rb").readline())
        assert reply["answer"]["id"] == 7
        assert plane.released == []  # held while the run lives
        client.close()
        wait_until(lambda: plane.released == [(os.getuid(), 7)], 10)
        # `keep`: granted on another node, for the user to use there.
        client = hold(path, {"reserve": RESERVE})
        client.makefile("rb").readline()
        client.sendall(b"keep\n")
        client.close()
        taken_over = hold(path, {"id": 9})  # after a restart, a run holds its request again
        assert json.loads(taken_over.makefile("rb").readline()) == {"held": True}
        taken_over.close()
        wait_until(lambda: plane.released == [(os.getuid(), 7), (os.getuid(), 9)], 10)
    finally:
        stop.set()


def test_a_hold_names_a_request_or_makes_one(tmp_path: Path) -> None:
    plane, path, stop = serve(tmp_path)
    try:
        for bad in ({"id": 3, "reserve": RESERVE}, {}, {"id": 0}, {"reserve": {"count": 0}}):
            client = hold(path, bad)
            reply = json.loads(client.makefile("rb").readline())
            client.close()
            assert reply["kind"] == "refused" and reply["detail"].startswith("bad request"), bad
        assert plane.released == []
    finally:
        stop.set()
