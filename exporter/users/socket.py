"""Where users' `gpuacct` commands reach the node daemon: a Unix socket anyone may connect to.

Who is asking is what the kernel says about the other end of the connection (`SO_PEERCRED`),
never what the client writes. The daemon names the caller by that uid, adds this node's GPUs
and forwards the ask to the control plane signed with the node key (gpuacct.allocation).

One JSON line in, one JSON line out: `{"answer": ...}` (a gpuacct.allocation.Answer), or
`{"detail": "...", "kind": "refused" | "unreachable"}`.

Root alone may also ask for a new login's session to be held to its user's GPU device gating
before its first command (`{"op": "session", "user": ..., "pid": ...}`, from the PAM hook),
answered on the node: `{"placed": "..."}`.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gpuacct import http
from gpuacct.allocation import (
    ALLOCATION_PATH,
    BALANCE_PATH,
    Answer,
    Ask,
    Balance,
    Caller,
    Forwarded,
    Hold,
    Login,
    Release,
)
from gpuacct.config import describe_error
from gpuacct.login import LOGIN_PATH
from gpuacct.policy import NodeGpu
from gpuacct.signed_http import ExchangeError, exchange
from gpuacct.signing import NodeIdentity

log = logging.getLogger(__name__)
MAX_LINE = 64 << 10


class Session(BaseModel):
    """A login's session process (`pid`, root's until it starts the user's shell), to be held
    as `user`'s work is."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["session"]
    user: Annotated[str, Field(min_length=1, max_length=64)]
    pid: Annotated[int, Field(ge=1, le=1 << 22)]


ASK: TypeAdapter[Any] = TypeAdapter(Annotated[Ask | Session, Field(discriminator="op")])


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel recorded it at connect()."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Forwarder:
    """Turns one user's ask into the signed request to the control plane."""

    def __init__(self, identity: NodeIdentity, enforcer_url: str,
                 gpus: Callable[[], tuple[NodeGpu, ...] | None], timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.identity, self.node, self.url = identity, identity.node, enforcer_url
        self.gpus, self.timeout, self.tls = gpus, timeout, tls

    def forward(self, uid: int, ask: Any) -> dict[str, Any]:
        """An ask (gpuacct.allocation.Ask) to the control plane as the uid's; its reply."""
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return {"detail": f"uid {uid} has no name on {self.node}", "kind": "refused"}
        forwarded = Forwarded(caller=Caller(node=self.node, uid=uid, user=user), ask=ask,
                              gpus=self.gpus())
        path = (LOGIN_PATH if isinstance(ask, Login) else BALANCE_PATH
                if isinstance(ask, Balance) else ALLOCATION_PATH)
        try:
            body = exchange(self.url, "POST", path,
                            forwarded.model_dump_json().encode(), self.identity.sign,
                            self.identity.verify, self.timeout, self.tls)
            answer = Answer.model_validate_json(body)
        except ExchangeError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
                return {"detail": http.detail(exc.detail), "kind": "refused"}
            log.warning("cannot forward %s's request: %s", user, exc)
            return {"detail": f"the control plane cannot be reached from {self.node}; try "
                             "again later", "kind": "unreachable"}
        except ValidationError:
            return {"detail": "the control plane's answer is unreadable", "kind": "unreachable"}
        return {"answer": answer.model_copy(update={"node": self.node}).model_dump(mode="json")}


    def release(self, uid: int, id: int) -> None:
        """A waiting run's request, withdrawn or released as its caller (a hold's end)."""
        reply = self.forward(uid, Release(id=id))
        if "answer" in reply:
            log.info("uid %d's run ended: %s", uid, reply["answer"]["text"])


class _Handler(socketserver.StreamRequestHandler):
    server: UserSocketServer

    def handle(self) -> None:
        uid = peer_uid(self.request)
        line = self.rfile.readline(MAX_LINE + 1)
        ask = {"detail": "request too long", "kind": "refused"} if len(line) > MAX_LINE \
            else parse(line)
        if isinstance(ask, Hold):
            self._hold(uid, ask)
            return
        if isinstance(ask, Session):
            reply = {"placed": self.server.place(ask.user, ask.pid)} if uid == 0 \
                else {"detail": "only root (the PAM hook) places sessions", "kind": "refused"}
        else:
            reply = ask if isinstance(ask, dict) else self.server.forwarder.forward(uid, ask)
        self.wfile.write(json.dumps(reply).encode() + b"\n")

    def _hold(self, uid: int, held: Hold) -> None:
        """Kept open for as long as the waiting run lives; its end ends the request, unless
        the run said `keep` (its grant is on another node, for the user to use there). A
        request made here is answered on this connection, so one whose run is gone before
        the answer comes is ended all the same."""
        id = held.id
        reply: dict[str, Any] = {"held": True}
        if held.reserve is not None:  # answered here; its id is what is held
            reply = self.server.forwarder.forward(uid, held.reserve)
            answer = reply.get("answer")
            id = answer.get("id") if isinstance(answer, dict) else None
        try:
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()
            said = self.rfile.readline(16) if id is not None else b"keep"  # until keep or close
        except OSError:  # the run is gone
            said = b""
        if id is not None and said.strip() != b"keep":
            self.server.forwarder.release(uid, id)


def parse(line: bytes) -> Any:
    """The ask a line says (gpuacct.allocation.Ask), or the reply refusing it."""
    try:
        return ASK.validate_json(line)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors(include_url=False))
        return {"detail": f"bad request: {problems}", "kind": "refused"}


class UnixServer(socketserver.ThreadingUnixStreamServer):
    """A thread per connection on a Unix socket of the node daemon's, closed (and its file
    removed) when the daemon stops."""

    daemon_threads = True
    # Every user of a node may connect at once (a login burst, a script in a loop); the
    # default backlog of 5 would refuse the sixth with EAGAIN.
    request_queue_size = 128
    path: Path
    name = "socket"

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self.serve_forever, name=self.name, daemon=True).start()
        threading.Thread(target=self._close_on, args=(stop,), daemon=True).start()

    def _close_on(self, stop: threading.Event) -> None:
        stop.wait()
        self.shutdown()
        self.path.unlink(missing_ok=True)


class UserSocketServer(UnixServer):
    name = "user socket"

    def __init__(self, path: Path, forwarder: Forwarder,
                 place: Callable[[str, int], str] = lambda user, pid: "no gating here") -> None:
        self.forwarder, self.path, self.place = forwarder, path, place
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by a daemon that died
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o666)  # everyone may ask; the kernel says who they are
