"""Start a server as a child process, wait until it answers, stop it and everything it forked.

Children get their own session (so a terminal's Ctrl-C reaches only the parent, which then stops
them in order) and PR_SET_PDEATHSIG (so they die with the parent even if it is SIGKILLed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from gpuacct import http

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server that exited or never became ready; the message ends with its log tail."""


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) can be taken as the source port of any outgoing connection before
    the server binds it, which a busy test run does."""
    below = _ephemeral_start()
    for _ in range(1000):
        port = random.randrange(20000, below) if below > 21000 else random.randrange(1024, 65536)
        if bind_error(host, port) is None:
            return port
    raise ServerError(f"no free port on {host}")


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port now (None: it could), binding as the
    servers do (SO_REUSEADDR: a port left in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready_url: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_headers: dict[str, str] | None = None,  # a server that wants credentials
        ready_tls: ssl.SSLContext | None = None,  # verifies an https:// ready_url
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready_headers, self.ready_tls = ready_headers, ready_tls
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads exist yet in the child)
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> ManagedProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen is None or self.popen.poll() is not None:
                code = None if self.popen is None else self.popen.returncode
                raise ServerError(f"{self.name} exited with status {code}\n{self.log_tail()}")
            try:
                http.get(self.ready_url, timeout=2, headers=self.ready_headers, tls=self.ready_tls)
                return self
            except http.HttpError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} not ready at {self.ready_url} after {timeout:.0f}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while something it forked lingers in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"({self.name}: no log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"{self.name}| {line}" for line in tail)
