"""What the CPU limiter and the device gate share about cgroups: which group a process is in,
and a write that says where it failed."""

from __future__ import annotations

from pathlib import Path


def group_of(pid: int, controller: str | None, proc_root: str = "/proc") -> str | None:
    """The pid's group, relative to its hierarchy's root: in the cgroup v1 hierarchy of
    `controller`, or in the unified (v2) one for None; None if the process is gone."""
    try:
        lines = Path(f"{proc_root}/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controllers == "" if controller is None else controller in controllers.split(",")):
            return path
    return None


def write(path: Path, value: str, error: type[Exception]) -> None:
    """`value` written to a cgroup file; `error` naming both where the kernel refuses."""
    try:
        path.write_text(value)
    except OSError as exc:
        raise error(f"cannot write {value!r} to {path}: {exc.strerror}") from None
