"""gpuacct's Docker socket: users reach the node's Docker engine through it, and every
container it creates carries the label gpuacct.user=<the caller>, the caller being who the
kernel says is at the other end (SO_PEERCRED). Docker's own socket stays root's: an engine
cannot tell who is calling (its authorization plugins see requests, not uids), which is why
a proxy is needed at all.

Requests pass through as they are, but for:
- `POST /containers/create`: its JSON read (bounded), refused when it sets gpuacct.user
  itself, stamped otherwise;
- `POST /containers/{id}/exec`: refused on a container stamped for somebody else (what runs
  there is billed to the container's user).
A request that upgrades the connection (attach, exec start) turns it into a plain pipe. The
engine's answers are copied back untouched.

This attributes containers; it does not confine them: whoever may create containers can
still mount the host's files or run privileged ones (see docs/containers.md).
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import logging
import os
import pwd
import re
import socket
import socketserver
import threading
from pathlib import Path
from typing import IO, Any

from exporter.containers.docker_api import DockerApi, DockerUnavailable
from exporter.containers.owners import STAMP
from exporter.users.socket import UnixServer, peer_uid

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10  # request line and headers
MAX_CREATE = 4 << 20  # a container's JSON
CHUNK = 64 << 10
UPGRADE_WAIT = 30.0  # seconds the engine may take to answer an attach or exec start
_CREATE = re.compile(r"^(?:/v[0-9]{1,3}\.[0-9]{1,3})?/containers/create(?:\?[^#]*)?$")
_SWARM = re.compile(r"^(?:/v[0-9]{1,3}\.[0-9]{1,3})?/(?:swarm|services)/")
_DOTS = re.compile(r"/\.\.?(?:/|$)")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_EXEC = re.compile(r"^(?:/v[0-9]{1,3}\.[0-9]{1,3})?/containers/([^/?]{1,256})/exec(?:\?.*)?$")


class Switch(threading.Event):
    """Set by the engine's first answer after an upgrading request: whether it switched
    protocols (an earlier request's answer coming first counts as not: the connection is
    closed rather than piped)."""

    upgraded = False


class Refused(Exception):
    """A request not passed on: its HTTP status and the reason, as the engine says them."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _answer(status: int, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    reason = {400: "Bad Request", 403: "Forbidden", 413: "Payload Too Large",
              502: "Bad Gateway"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_head(reader: IO[bytes]) -> bytes | None:
    """A request's line and headers, up to the empty line; None at the end of the
    connection. Raises Refused when they run past MAX_HEAD."""
    head = b""
    while True:
        line = reader.readline(MAX_HEAD + 1)
        if not line:
            return head if head else None
        head += line
        if len(head) > MAX_HEAD:
            raise Refused(400, "request headers too long")
        if line in (b"\r\n", b"\n"):
            if head.strip():
                return head
            head = b""  # empty lines between requests are allowed


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers; refused where the engine might read the request otherwise
    than this proxy does (framing, or a path it would decode or clean into another): what
    is passed on unread must be what was read."""
    lines = head.decode("latin-1").split("\r\n" if b"\r\n" in head else "\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "a malformed request line")
    path = parts[1].partition("?")[0]
    if not path.startswith("/") or "%" in path or "//" in path or _DOTS.search(path):
        raise Refused(400, "a request path that is encoded or not plain")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not line:
            continue
        if not sep or not _TOKEN.match(name):
            raise Refused(400, "a malformed header")
        name = name.lower()
        if name in headers and name in ("content-length", "transfer-encoding"):
            raise Refused(400, f"{name} given twice")
        headers[name] = value.strip()
    coding = headers.get("transfer-encoding")
    if coding is not None and (coding.lower() != "chunked" or "content-length" in headers):
        raise Refused(400, "a body framed other than by chunks or by its length alone")
    return parts[0], parts[1], headers


def _copy_exactly(reader: IO[bytes], out: socket.socket, n: int) -> None:
    while n > 0:
        data = reader.read(min(n, CHUNK))
        if not data:
            raise ConnectionError("the client closed mid-body")
        out.sendall(data)
        n -= len(data)


def _read_chunked(reader: IO[bytes], limit: int, out: socket.socket | None) -> bytes:
    """A chunked body: passed on as it is (`out`), or gathered (at most `limit` bytes)."""
    body = b""
    while True:
        size_line = reader.readline(1024)
        if out is not None:
            out.sendall(size_line)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise Refused(400, "a malformed chunk") from None
        if size == 0:
            while True:  # trailers, then the empty line
                line = reader.readline(MAX_HEAD)
                if out is not None:
                    out.sendall(line)
                if line in (b"\r\n", b"\n", b""):
                    return body
        if out is not None:
            _copy_exactly(reader, out, size + 2)
            continue
        if len(body) + size > limit:
            raise Refused(413, f"a request body over {limit} bytes")
        data = reader.read(size + 2)
        body += data[:size]


def _body(reader: IO[bytes], headers: dict[str, str], limit: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked(reader, limit, None)
    length = _length(headers)
    if length > limit:
        raise Refused(413, f"a request body over {limit} bytes")
    return reader.read(length)


def _length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length", "0")
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(400, "a malformed Content-Length")
    return int(raw)


def stamp(body: bytes, user: str) -> bytes:
    """The container's JSON with gpuacct.user set to `user`; refused if it set it. The engine
    (Go) matches keys regardless of case, and merges every spelling of Labels in order: all
    of them are read here, and one Labels, stamped, is written last."""
    try:
        config: Any = json.loads(body or b"{}")
    except ValueError:
        raise Refused(400, "the container's configuration is not JSON") from None
    if not isinstance(config, dict):
        raise Refused(400, "the container's configuration is not a JSON object")
    labels: dict[str, Any] = {}
    for key in [k for k in config if k.lower() == "labels"]:
        given = config.pop(key) or {}
        if not isinstance(given, dict):
            raise Refused(400, f"{key} is not an object")
        labels.update(given)
    if STAMP in labels:
        raise Refused(403, f"the label {STAMP} is gpuacct's own: it names who created the "
                           "container, and gpuacct sets it")
    config["Labels"] = {**labels, STAMP: user}
    return json.dumps(config).encode()


def _rewritten(head: bytes, body: bytes) -> bytes:
    """The request's head with the new body's length (and no chunking), then the body."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    kept = [line for line in lines[1:] if line and line.split(":")[0].strip().lower()
            not in ("content-length", "transfer-encoding")]
    return ("\r\n".join([lines[0], *kept, f"Content-Length: {len(body)}"]) + "\r\n\r\n"
            ).encode("latin-1") + body


class _Handler(socketserver.BaseRequestHandler):
    server: DockerProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        uid = peer_uid(client)
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            client.sendall(_answer(403, f"uid {uid} has no name on this node"))
            return
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.server.engine.path))
        except OSError as exc:
            client.sendall(_answer(502, f"the Docker engine is not reachable: {exc.strerror}"))
            return
        lock = threading.Lock()  # the engine's answers and our refusals, one at a time
        switched = Switch()
        pump = threading.Thread(target=self._pump, args=(upstream, client, lock, switched),
                                daemon=True)
        pump.start()
        reader = client.makefile("rb")
        try:
            self._requests(reader, upstream, client, lock, switched, uid, user)
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            pump.join()
            upstream.close()

    def _requests(self, reader: io.BufferedReader, upstream: socket.socket, client: socket.socket,
                  lock: threading.Lock, switched: Switch, uid: int, user: str) -> None:
        while True:
            try:
                head = read_head(reader)
                if head is None:
                    return
                method, target, headers = parse_head(head)
                if method == "POST" and _CREATE.match(target):
                    upstream.sendall(_rewritten(head, stamp(_body(reader, headers, MAX_CREATE),
                                                            user)))
                    log.info("container created for %s through the Docker socket", user)
                    continue
                if method == "POST" and _SWARM.match(target):
                    _body(reader, headers, MAX_CREATE)
                    raise Refused(403, "swarm services are not offered through gpuacct's "
                                       "socket: their containers would be nobody's")
                exec_in = _EXEC.match(target) if method == "POST" else None
                if exec_in and uid != 0:
                    try:
                        self._may_exec(exec_in.group(1), user)
                    except Refused:
                        _body(reader, headers, MAX_CREATE)  # passed over, not passed on
                        raise
            except Refused as refused:
                with lock:
                    client.sendall(_answer(refused.status, str(refused)))
                if refused.status in (400, 413):
                    return  # where the next request begins is not known
                continue
            upgrading = "upgrade" in headers.get("connection", "").lower()
            if upgrading:
                switched.clear()
            upstream.sendall(head)
            if "transfer-encoding" in headers:
                _read_chunked(reader, 0, upstream)
            else:
                _copy_exactly(reader, upstream, _length(headers))
            if upgrading:
                # A stream from here on (attach, exec start) only if the engine switched
                # protocols: otherwise it reads what follows as requests, unseen by us.
                if switched.wait(UPGRADE_WAIT) and switched.upgraded:
                    self._pipe(reader, upstream)
                return

    def _may_exec(self, container: str, user: str) -> None:
        try:
            facts = self.server.engine.inspect(container)
        except DockerUnavailable as exc:
            raise Refused(403, f"cannot check whose container {container} is: {exc}") from None
        owner = facts.labels.get(STAMP) if facts else None
        if owner is not None and owner != user:
            raise Refused(403, f"container {container} is {owner}'s: what runs in it is "
                               f"billed to {owner}")

    @staticmethod
    def _pipe(reader: io.BufferedReader, upstream: socket.socket) -> None:
        while True:
            data = reader.read1(CHUNK)
            if not data:
                return
            upstream.sendall(data)

    @staticmethod
    def _pump(upstream: socket.socket, client: socket.socket, lock: threading.Lock,
              switched: Switch) -> None:
        try:
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                if not switched.is_set():  # the answer to an upgrade, or to one before it
                    switched.upgraded = data.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101"))
                    switched.set()
                with lock:
                    client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


class DockerProxy(UnixServer):
    name = "docker socket"

    def __init__(self, path: Path, engine_socket: Path, group: str) -> None:
        """Listens on `path`, for root and `group` (which must exist); raises OSError or
        KeyError."""
        gid = grp.getgrnam(group).gr_gid
        self.engine, self.path = DockerApi(engine_socket), path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by a daemon that died
        super().__init__(str(path), _Handler)
        os.chown(path, 0, gid)
        os.chmod(path, 0o660)
