"""Whose a container is. A GPU process in a container runs as root (or as any uid the
container asked for), so its uid says nothing: the container does.

In order: the label gpuacct.user (stamped by gpuacct's Docker socket, which refuses callers
who set it); the labels and environment variables named in exporter.containers; a rootless
engine's owning user (its containers live under `user@<uid>.service`). Whoever is named must
be a user from min_uid on. A container none of them names is its process's uid's where that
is a user's, else unattributed.
"""

from __future__ import annotations

import logging
import pwd
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.containers.docker_api import DockerApi, DockerUnavailable
from exporter.usage.jobs import container_of
from gpuacct.config import ContainerSettings

log = logging.getLogger(__name__)

STAMP = "gpuacct.user"  # the label gpuacct's Docker socket puts on every container it creates
RETRY_SECONDS = 30.0  # an engine that did not answer is asked again after this
MAX_REMEMBERED = 4096  # containers whose facts are kept (a container's labels never change)

_ROOTLESS = re.compile(r"/user@([0-9]{1,10})\.service/")
_DOCKER_API = ("docker", "podman")  # runtimes whose engine answers Docker's API


@dataclass(frozen=True)
class Owner:
    uid: int
    user: str


@dataclass(frozen=True)
class Container:
    """A process's container and whose it is (None: nobody could be found)."""

    id: str  # 64 hex
    image: str
    owner: Owner | None
    by: str  # how the owner was found: the label or variable, "rootless", or ""
    engine: bool  # its engine answers the Docker API (it can be stopped through it)

    @property
    def short(self) -> str:
        return self.id[:12]


class NotYet(Exception):
    """The engine could not be asked now: decide again later (`meanwhile`: what to go by
    until then, if anything)."""

    def __init__(self, meanwhile: object = None) -> None:
        super().__init__("the container engine did not answer")
        self.meanwhile = meanwhile


def _user(name: str) -> Owner | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Owner(entry.pw_uid, entry.pw_name)


def _uid(uid: int) -> Owner | None:
    try:
        return Owner(uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return None


class ContainerOwners:
    def __init__(self, settings: ContainerSettings, min_uid: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.min_uid, self._clock = settings, min_uid, clock
        self.docker = DockerApi(settings.docker_socket) if settings.docker_socket else None
        self._known: dict[str, Container] = {}
        self._failed_at = -1e9
        self._said = False

    def of(self, cgroup: str, environ: Callable[[], dict[str, str]]) -> Container | None:
        """The container a process with this /proc/<pid>/cgroup text is in, None when it is
        in none; `environ` reads the process's environment. Raises NotYet."""
        inside = container_of(cgroup)
        if inside is None:
            return None
        runtime, id = inside
        known = self._known.get(id)
        if known is not None:
            return known
        engine = runtime in _DOCKER_API
        labels, image = self._labels(id) if engine else ({}, "")
        owner, by = self._owner(labels, environ)
        if owner is None:
            rootless = _ROOTLESS.search(cgroup)
            if rootless:
                owner, by = self._allowed(_uid(int(rootless.group(1)))), "rootless"
        found = Container(id, image, owner, by if owner else "", engine)
        if len(self._known) >= MAX_REMEMBERED:
            self._known.pop(next(iter(self._known)))
        self._known[id] = found
        return found

    def _labels(self, id: str) -> tuple[dict[str, str], str]:
        if self.docker is None or not self.docker.path.exists():
            return {}, ""  # no engine here to ask: nothing it could say
        if self._clock() - self._failed_at < RETRY_SECONDS:
            raise NotYet()
        try:
            facts = self.docker.inspect(id)
        except DockerUnavailable as exc:
            self._failed_at = self._clock()
            if not self._said:
                log.warning("cannot ask the container engine whose container %s is (%s); "
                            "asking again every %.0f s", id[:12], exc, RETRY_SECONDS)
                self._said = True
            raise NotYet() from None
        self._said = False
        if facts is None:  # gone meanwhile, or another engine's
            return {}, ""
        return {**{f"env:{k}": v for k, v in facts.env.items()}, **facts.labels}, facts.image

    def _owner(self, labels: dict[str, str],
               environ: Callable[[], dict[str, str]]) -> tuple[Owner | None, str]:
        if STAMP in labels:  # stamped: nothing else may name anyone
            return self._allowed(_user(labels[STAMP])), STAMP
        for label in self.settings.user_labels:
            if labels.get(label):
                return self._allowed(_user(labels[label])), label
        if self.settings.user_env:
            env = environ()
            for name in self.settings.user_env:
                value = env.get(name) or labels.get(f"env:{name}")
                if value:
                    return self._allowed(_user(value)), f"${name}"
        return None, ""

    def _allowed(self, owner: Owner | None) -> Owner | None:
        return owner if owner is not None and owner.uid >= max(self.min_uid, 1) else None
