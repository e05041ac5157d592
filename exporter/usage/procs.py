"""The process table from /proc: what changes each cycle, and what never changes per process.

Per cycle only `/proc/<pid>/stat` is read (one read gives CPU times, parent, session and RSS).
What never changes for a (pid, start time) pair — real uid, environment, command line, cgroup —
is read once and cached; a pid that is reused gets a new start time and so a new entry. An exec
keeps pid and start time but replaces environment and command line, so the cache also keys on
what an exec changes in the same stat line (comm and the argument and environment addresses):
a process caught between fork and exec is identified again once it runs its program.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from dataclasses import dataclass
from typing import cast

from exporter.containers.owners import Container, ContainerOwners, NotYet
from exporter.usage.jobs import SHELLS, bounded, container_id, env_job, job_name, parse_environ
from exporter.usage.metadata import framework_from_argv, framework_from_maps, script_and_args, shown

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FRAMEWORK_RECHECK = 30.0  # seconds between looks at the maps of a process with no framework
FRAMEWORK_WATCH = 600.0  # ... for its first ten minutes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcIdentity:
    """What never changes for one process."""

    uid: int
    user: str
    job: str
    job_source: str  # env, container or session
    name: str
    is_shell: bool
    script: str = ""  # as given on the command line, bounded
    args: str = ""  # the script's arguments, secrets redacted, bounded
    cwd: str = ""
    framework: str = ""  # from the command line; the mapped libraries may say later
    container: str = ""  # the full id of the container it runs in, whose owner `user` is


@dataclass(frozen=True)
class Unattributed:
    """A process nobody is billed for whose GPU time is still counted: root's or another
    system user's (container ""), or one in a container nobody could be found for."""

    container: str = ""  # 12 hex
    image: str = ""
    id: str = ""  # the container's full id

    @property
    def job(self) -> str:
        return f"unattributed-{self.container or 'host'}"


@dataclass(frozen=True)
class ProcSample:
    pid: int
    start_ticks: int  # since boot: with pid, the process' identity
    ppid: int
    cpu_ticks: int  # utime + stime of every thread
    child_ticks: int  # cutime + cstime: reaped children
    rss_bytes: int
    identity: ProcIdentity
    framework: str = ""  # from its command line or the libraries it has mapped

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


Who = ProcIdentity | Unattributed | None


class UserNames:
    """uid to login name, `uid_<n>` when the uid has no passwd entry; misses retried later."""

    def __init__(self, retry_seconds: float = 60.0) -> None:
        self._known: dict[int, str] = {}
        self._missing: dict[int, float] = {}
        self._retry = retry_seconds

    def __call__(self, uid: int) -> str:
        if uid in self._known:
            return self._known[uid]
        if time.monotonic() - self._missing.get(uid, -1e9) < self._retry:
            return f"uid_{uid}"
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            self._missing[uid] = time.monotonic()
            return f"uid_{uid}"
        self._known[uid] = name
        return name


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def uptime_seconds(proc_root: str = "/proc") -> float:
    """Seconds since boot, on the clock that process start times in /proc/<pid>/stat use."""
    return float(_read(f"{proc_root}/uptime").split()[0])


def parse_stat(raw: bytes) -> tuple[str, list[bytes]]:
    """comm and the fields after it; comm may itself hold spaces and parentheses."""
    open_paren, close_paren = raw.index(b"("), raw.rindex(b")")
    return raw[open_paren + 1:close_paren].decode(errors="replace"), raw[close_paren + 2:].split()


def real_uid(status: bytes) -> int:
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    raise ValueError("no Uid line in status")


class ProcessTable:
    def __init__(self, min_uid: int, job_sources: list[str], job_env_vars: list[str],
                 proc_root: str = "/proc", max_id_length: int = 128,
                 only_users: list[str] | None = None,
                 owners: ContainerOwners | None = None) -> None:
        self.min_uid = min_uid
        self.owners = owners
        self.only = None if only_users is None else frozenset(only_users)
        self.job_sources = job_sources
        self.job_env_vars = job_env_vars
        self.max_id_length = max_id_length
        self._told: set[str] = set()  # the cut ids already named in the log (bounded)
        self.root = proc_root
        self.user_names = UserNames()
        # (pid, start) -> (what an exec changes, identity)
        self._identities: dict[tuple[int, int], tuple[tuple[object, ...], Who]] = {}
        # Alive but billed to nobody (root, system users): they still take a share of a GPU.
        self.unbilled_pids: set[int] = set()
        self.unattributed: dict[int, Unattributed] = {}  # of those, the ones counted
        # (pid, start) -> the framework its maps showed ("" once no longer looked for), or
        # when to look again, the wait, and when to stop looking
        self._frameworks: dict[tuple[int, int], str | tuple[float, float, float]] = {}

    def scan(self) -> list[ProcSample]:
        """Every billable process now; those that vanish mid-read are simply absent."""
        samples = []
        seen = set()
        self.unbilled_pids, self.unattributed = set(), {}
        for entry in os.scandir(self.root):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                comm, f = parse_stat(_read(f"{self.root}/{pid}/stat"))
                start = int(f[19])
                key = (pid, start)
                seen.add(key)
                image: tuple[object, ...] = (comm, *f[45:49])  # arg_start .. env_end
                cached = self._identities.get(key)
                # An exiting process (a zombie) has lost its command line and environment:
                # it stays what it was, not a new job of its session.
                if cached is not None and (f[0] == b"Z" or not any(map(int, f[45:49]))):
                    image = cached[0]
                if cached is None or cached[0] != image:
                    try:
                        cached = (image, self._identify(pid, int(f[3]), comm))
                        self._identities[key] = cached
                    except NotYet as wait:  # its container's engine did not answer
                        cached = (image, cast(Who, wait.meanwhile))  # asked again next cycle
                identity = cached[1]
            except (OSError, ValueError, IndexError):
                continue  # gone, or a /proc entry we cannot parse: not ours to bill
            if not isinstance(identity, ProcIdentity):
                self.unbilled_pids.add(pid)
                if identity is not None:
                    self.unattributed[pid] = identity
                continue
            samples.append(ProcSample(
                pid=pid, start_ticks=start, ppid=int(f[1]),
                cpu_ticks=int(f[11]) + int(f[12]), child_ticks=int(f[13]) + int(f[14]),
                rss_bytes=int(f[21]) * PAGE_SIZE, identity=identity,
                framework=identity.framework or self._mapped_framework(key, identity),
            ))
        for key in self._identities.keys() - seen:
            del self._identities[key]
        for key in self._frameworks.keys() - seen:
            del self._frameworks[key]
        return samples

    def _mapped_framework(self, key: tuple[int, int], identity: ProcIdentity) -> str:
        """The framework whose libraries the process has mapped. One that has none yet (an
        `import torch` takes seconds) is looked at again after 1, 2, 4... seconds, at most every
        FRAMEWORK_RECHECK seconds, and no more once it has been watched for FRAMEWORK_WATCH:
        frameworks are imported when a program starts, and a large table's maps are not
        read every cycle."""
        now = time.monotonic()
        known = self._frameworks.get(key)
        if isinstance(known, str):
            return known
        if identity.is_shell:
            return ""
        due, wait, until = known or (now, 0.5, now + FRAMEWORK_WATCH)
        if now < due:
            return ""
        try:
            found = framework_from_maps(_read(f"{self.root}/{key[0]}/maps").decode(
                errors="replace"))
        except OSError:
            found = ""
        wait = min(2 * wait, FRAMEWORK_RECHECK)
        self._frameworks[key] = found if found or now + wait > until else (now + wait, wait,
                                                                           until)
        return found

    def _identify(self, pid: int, session: int, comm: str) -> Who:
        """Unattributed for root's and system users' processes and for those in a container
        nobody could be found for; None for the ones not ours at all (kernel threads, users
        not in only_users). A process in a container is its owner's, whatever its uid; in an
        unowned container, its uid's where that is a user's. Raises NotYet when the
        container's engine could not be asked, with what to go by meanwhile."""
        base = f"{self.root}/{pid}"
        uid = real_uid(_read(f"{base}/status"))
        try:
            cgroup = _read(f"{base}/cgroup").decode(errors="replace")
        except OSError:
            cgroup = ""
        try:
            container = self.owners.of(cgroup, lambda: parse_environ(
                _read(f"{base}/environ"))) if self.owners is not None and cgroup else None
        except NotYet:
            if uid < self.min_uid:
                raise
            raise NotYet(self._identify_as(pid, session, comm, uid, cgroup, None)) from None
        if container is not None and container.owner is not None:
            uid = container.owner.uid
        elif uid < self.min_uid:
            return Unattributed(container.short, container.image, container.id) \
                if container is not None else Unattributed()
        return self._identify_as(pid, session, comm, uid, cgroup, container)

    def _identify_as(self, pid: int, session: int, comm: str, uid: int, cgroup: str,
                     container: Container | None) -> ProcIdentity | None:
        base = f"{self.root}/{pid}"
        if self.only is not None and self.user_names(uid) not in self.only:
            return None
        argv = [a.decode(errors="replace") for a in _read(f"{base}/cmdline").split(b"\0") if a]
        job, source = None, "session"
        for kind in self.job_sources:
            job = self._job_from(kind, base, session, cgroup)
            if job:
                source = kind
                break
        job, cut = bounded(job or f"sid-{session}", self.max_id_length)
        name, cut_name = bounded(job_name(argv, comm), self.max_id_length)
        script, args = script_and_args(argv)
        try:
            cwd = os.readlink(f"{base}/cwd")
        except OSError:
            cwd = ""
        user = self.user_names(uid)
        if (cut or cut_name) and job not in self._told and len(self._told) < 10_000:
            self._told.add(job)
            log.warning("pid %d of %s: a job id or name too long or with odd characters is "
                        "shown as %s (exporter.max_job_id_length %d)", pid, user,
                        job if cut else name, self.max_id_length)
        return ProcIdentity(uid=uid, user=user, job=job, job_source=source, name=name,
                            is_shell=comm in SHELLS,
                            script=bounded(script, self.max_id_length)[0] if script else "",
                            args=shown(args), cwd=shown([cwd]),
                            framework=framework_from_argv(argv),
                            container=container.id if container and container.owner else "")

    def _job_from(self, kind: str, base: str, session: int, cgroup: str) -> str | None:
        """The job as one source sees it; an unreadable file means that source has no answer."""
        try:
            if kind == "env":
                return env_job(parse_environ(_read(f"{base}/environ")), self.job_env_vars)
            if kind == "container":
                return container_id(cgroup)
        except OSError:
            return None
        return f"sid-{session}"
