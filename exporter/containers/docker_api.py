"""The few calls the node daemon makes to a Docker (or Podman) engine over its Unix socket:
a container's labels, environment and image, and a signal to it. Answers are read bounded."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

MAX_ANSWER = 4 << 20  # an inspect answer is a few KiB; a hundred labels still far below this


class DockerUnavailable(Exception):
    """The engine could not be asked (not running, not answering, an unreadable answer)."""


@dataclass(frozen=True)
class ContainerFacts:
    id: str
    image: str
    labels: dict[str, str]
    env: dict[str, str]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerApi:
    def __init__(self, path: Path, timeout: float = 3.0) -> None:
        self.path, self.timeout = path, timeout

    def _call(self, method: str, target: str) -> tuple[int, bytes]:
        connection = _UnixConnection(self.path, self.timeout)
        try:
            connection.request(method, target, headers={"Host": "docker"})
            response = connection.getresponse()
            body = response.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise DockerUnavailable(f"{self.path}: {exc}") from None
        finally:
            connection.close()
        if len(body) > MAX_ANSWER:
            raise DockerUnavailable(f"{self.path}: an answer over {MAX_ANSWER} bytes")
        return response.status, body

    def inspect(self, container: str) -> ContainerFacts | None:
        """The container's facts; None when the engine has no such container."""
        status, body = self._call("GET", f"/containers/{quote(container, safe='')}/json")
        if status == 404:
            return None
        if status != 200:
            raise DockerUnavailable(f"{self.path}: inspect answered {status}")
        try:
            found: Any = json.loads(body)
            config = found.get("Config") or {}
            labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
            env = dict(item.partition("=")[::2] for item in config.get("Env") or ()
                       if isinstance(item, str))
            return ContainerFacts(str(found["Id"]), str(config.get("Image") or ""), labels, env)
        except (ValueError, KeyError, AttributeError, TypeError):
            raise DockerUnavailable(f"{self.path}: an unreadable inspect answer") from None

    def kill(self, container: str, signal: str) -> str:
        """Send `signal` (SIGTERM, SIGKILL) to the container's main process: "ok", or "gone"
        when it is no longer there or no longer running; raises DockerUnavailable."""
        status, body = self._call("POST", f"/containers/{quote(container, safe='')}/kill"
                                          f"?signal={signal}")
        if status in (200, 204):
            return "ok"
        if status in (404, 409):  # no such container; not running
            return "gone"
        raise DockerUnavailable(f"{self.path}: kill answered {status}: {body[:200]!r}")
