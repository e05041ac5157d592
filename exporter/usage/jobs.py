"""Who a process belongs to: its job (env var, container, session) and the job's name."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

# Container ids as runtimes write them into /proc/<pid>/cgroup (cgroup v1 and v2, with and
# without systemd's scope units). The first group is the runtime, the second the 64-hex id.
_CONTAINER_PATTERNS = (
    (re.compile(r"kubepods.*?(?:docker-|cri-containerd-|crio-|/)([0-9a-f]{64})"), "k8s"),
    (re.compile(r"(?:/docker/|docker-)([0-9a-f]{64})"), "docker"),
    (re.compile(r"(?:libpod-|/libpod/)([0-9a-f]{64})"), "podman"),
    (re.compile(r"(?:cri-containerd-|/containerd/)([0-9a-f]{64})"), "containerd"),
    (re.compile(r"crio-([0-9a-f]{64})"), "crio"),
)

_INTERPRETERS = re.compile(
    r"^(python[0-9.]*|pypy[0-9.]*|perl[0-9.]*|ruby|node|Rscript|R|julia|lua|bash|sh|zsh|dash)$"
)
SHELLS = frozenset({"bash", "sh", "zsh", "dash", "fish", "tcsh", "csh", "ksh", "tmux: server",
                    "tmux", "screen", "SCREEN", "sshd", "login", "su", "sudo", "mosh-server"})


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+=/ -]")  # what a job id or name shows as itself


def bounded(value: str, limit: int) -> tuple[str, bool]:
    """A user's job id or name as a label: at most `limit` characters, other characters as
    `_`, and a hash of the whole when it had to change, so that two ids stay two. True when
    it changed."""
    clean = _UNSAFE.sub("_", value)
    if clean == value and len(value) <= limit:
        return value, False
    digest = hashlib.sha256(value.encode(errors="replace")).hexdigest()[:10]
    return f"{clean[:limit - len(digest) - 1]}~{digest}", True


def container_of(cgroup_text: str) -> tuple[str, str] | None:
    """(runtime, full 64-hex id) for a process inside a container, else None."""
    for pattern, runtime in _CONTAINER_PATTERNS:
        match = pattern.search(cgroup_text)
        if match:
            return runtime, match.group(1)
    return None


def container_id(cgroup_text: str) -> str | None:
    """`<runtime>-<12 hex>` for a process inside a container, else None."""
    found = container_of(cgroup_text)
    return f"{found[0]}-{found[1][:12]}" if found else None


def env_job(environ: dict[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def interpreter(program: str) -> bool:
    """Whether a program runs a script named after it (python, bash, node...)."""
    return bool(_INTERPRETERS.match(os.path.basename(program)))


def job_name(argv: Sequence[str], comm: str) -> str:
    """The script a job runs: `train.py` from `python -u train.py --lr 3`, `mod` from `-m mod`."""
    if not argv:
        return comm
    program = os.path.basename(argv[0])
    if not interpreter(program):
        return program or comm
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-m",):
            return next(args, program)
        if arg in ("-c", "-e"):
            return f"{program} {arg}"
        if arg.startswith("-"):
            continue
        return os.path.basename(arg)
    return program


def parse_environ(raw: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env
