"""Signals that reach only the process meant, and messages to a user's terminals.

A signal goes through a pidfd opened first, then the process is checked again — same start
time, same real uid, a uid that may be touched — so neither a reused pid nor a process that
changed hands between the decision and the signal is ever hit. A process in a container of a
user's (it runs as root) is stopped through its container engine: the signal goes to the
container, once the process is found to be the same.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exporter.containers.docker_api import DockerApi, DockerUnavailable
from exporter.usage.procs import parse_stat, real_uid
from gpuacct.policy import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A process as it was when it was chosen."""

    pid: int
    start_ticks: int
    uid: int  # the user's (for a container's process, its owner's)
    name: str = ""
    container: str = ""  # the full id of the user's container it runs in


def read_identity(pid: int, proc_root: str = "/proc") -> tuple[int, int] | None:
    """(start ticks, real uid) of a live pid, None if it is gone (or a zombie: dead already)."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            _, fields = parse_stat(f.read())
        if fields[0] == b"Z":
            return None
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            return int(fields[19]), real_uid(f.read())
    except (OSError, ValueError, IndexError):
        return None


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class Signaller:
    """Sends signals after the safety checks; `open_pid`, `identity` and `deliver` are the
    kernel's (pidfd_open, /proc, pidfd_send_signal) and `user_name` the passwd database's,
    unless a test supplies its own."""

    def __init__(self, min_uid: int, protected_users: Iterable[str], dry_run: bool,
                 open_pid: Callable[[int], int] = os.pidfd_open,
                 identity: Callable[[int], tuple[int, int] | None] = read_identity,
                 deliver: Callable[[int, int], None] = signal.pidfd_send_signal,
                 close: Callable[[int], None] = os.close,
                 user_name: Callable[[int], str | None] = _user_name,
                 only_users: Iterable[str] | None = None,
                 engine: DockerApi | None = None) -> None:
        self.min_uid = max(min_uid, 1)  # root is never a target, whatever min_uid says
        self.protected = frozenset(protected_users)
        self.only = None if only_users is None else frozenset(only_users)
        self.dry_run = dry_run
        self._open, self._identity, self._deliver, self._close = (open_pid, identity, deliver,
                                                                 close)
        self._user_name = user_name
        self.engine = engine

    def refusal(self, uid: int) -> str | None:
        """Why processes of `uid` may never be signalled or throttled, or None."""
        if uid < self.min_uid:
            return f"uid {uid} is below min_uid {self.min_uid}"
        name = self._user_name(uid)
        if name in self.protected:
            return f"{name} is a protected user"
        if self.only is not None and name not in self.only:
            return f"{name or f'uid {uid}'} is not one of exporter.only_users"
        return None

    def send(self, target: Target, sig: int) -> tuple[Result, str]:
        """(result, detail): ok, dry_run, refused or gone."""
        what = f"{signal.Signals(sig).name} to pid {target.pid} ({target.name or '?'})"
        refused = self.refusal(target.uid)
        if refused:
            return "refused", f"{what}: {refused}"
        if target.container:
            return self._to_container(target, sig, what)
        try:
            fd = self._open(target.pid)
        except (ProcessLookupError, OSError):
            return "gone", what
        try:
            now = self._identity(target.pid)
            if now is None:
                return "gone", what
            if now != (target.start_ticks, target.uid):
                return "refused", f"{what}: not the same process any more"
            refused = self.refusal(now[1])
            if refused:
                return "refused", f"{what}: {refused}"
            if self.dry_run:
                log.warning("dry run: would send %s", what)
                return "dry_run", what
            try:
                self._deliver(fd, sig)
            except ProcessLookupError:
                return "gone", what
            return "ok", what
        finally:
            self._close(fd)


    def _to_container(self, target: Target, sig: int, what: str) -> tuple[Result, str]:
        what = f"{what} in container {target.container[:12]}"
        now = self._identity(target.pid)
        if now is None:
            return "gone", what
        if now[0] != target.start_ticks:
            return "refused", f"{what}: not the same process any more"
        return self.to_container(target.container, sig, what)

    def to_container(self, container: str, sig: int, what: str) -> tuple[Result, str]:
        """`sig` to a container's main process through its engine (whoever runs in it: the
        caller has decided that it may be stopped)."""
        if self.engine is None:
            return "unsupported", f"{what}: no container engine to stop it through " \
                                  "(exporter.containers.docker_socket)"
        if self.dry_run:
            log.warning("dry run: would send %s", what)
            return "dry_run", what
        try:
            result = self.engine.kill(container, signal.Signals(sig).name)
        except DockerUnavailable as exc:
            return "failed", f"{what}: {exc}"
        return ("ok" if result == "ok" else "gone"), what


def _tty_path(tty_nr: int) -> str | None:
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"/dev/pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"/dev/tty{minor}"
    return None


def user_terminals(uid: int, proc_root: str = "/proc") -> set[str]:
    """The terminals the user's processes have as controlling terminal."""
    ttys = set()
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"{entry.path}/stat", "rb") as f:
                tty_nr = int(parse_stat(f.read())[1][4])
        except (OSError, ValueError, IndexError):
            continue
        path = _tty_path(tty_nr) if tty_nr else None
        if path:
            ttys.add(path)
    return ttys


def tell_user(uid: int, message: str, proc_root: str = "/proc") -> int:
    """Write `message` to each of the user's terminals, as write(1) does; how many got it.
    A terminal is written only if the user owns it, and never blocks."""
    text = ("\r\n" + message.replace("\n", "\r\n") + "\r\n").encode()
    told = 0
    for path in sorted(user_terminals(uid, proc_root)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid == uid:
                os.write(fd, text)
                told += 1
        except OSError as exc:
            log.debug("cannot write to %s: %s", path, exc)
        finally:
            os.close(fd)
    return told
